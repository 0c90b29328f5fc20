"""The engine: the single writer.

A push goes through three steps (docs/wal.md, "The engine's pushes"):

1. **prepare** (no engine lock): normalise the rows to the stream's
   declared types, project them for every view of the stream (DuckDB, a
   cursor per thread) and convert everything the views keep. REST/SDK
   pushes that wait for each other are prepared together, by the thread
   that gets the prepare lock, and logged together (`_prepare_together`).
   Everything that can refuse a batch happens here or in step 2, before
   the batch is logged: a refused batch changes nothing.
2. **log** (under the lock): take the engine clock, refuse events too far
   ahead of it, reserve offline sequence numbers, append the batch to the
   WAL without waiting, and queue it.
3. **commit**: wait until the record is durable under the fsync policy
   (concurrent pushes share writes and fsyncs), then apply queued batches in
   LSN order (under the lock): late events (beyond the stream's allowed
   lateness) are marked against the stream's watermark, the others go to the
   views, and every event goes to the offline log. A batch is visible to
   readers only once it is durable.

Applying a logged batch cannot fail by design; if it ever does, the record is
tombstoned (REC_ABORT), the engine's state is rebuilt from the last
checkpoint and the log (which skips it), and the caller gets the error.

Recovery = the last checkpoint (tables, window states, watermarks, source
offsets, idempotency keys) + replay of the logged batches after it, with the
`now` each was applied at, so replay reproduces the same state. A record that
cannot be replayed is set aside in `quarantine/` with a log line, never a
reason to refuse to start. Checkpoints hold the lock only to copy the tables
and either fork (`fstore serve`: the child encodes the window state) or copy
the window cells (embedded); the encoding, Parquet and fsyncs run after, and
the checkpoint lets the WAL drop older segments.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fscore.checkpoint import commit, load_latest_checkpoint, oldest_retained_lsn, temp_path, write_temp
from fscore.errors import CheckpointError, KeyEncodingError, WalCorruption
from fscore.layout import next_capacity
from fscore.proc import ForkedTaskError, fork_task
from fscore.table import PRESENT, Table
from fscore.wal import Wal, list_segments, read_log
from fscore.window import WindowView

from fsapp import duck
from fsapp.engine import records
from fsapp.engine.cluster import tags_of
from fsapp.engine.errors import AsOfOutsideHorizon, BatchError, EngineError, PartitionOwned, UnknownStreamError
from fsapp.engine.idempotency import MAX_KEY_LENGTH, IdempotencyWindow
from fsapp.engine.heap import available_bytes, release_free_memory
from fsapp.engine.ingest import BatchNormaliser
from fsapp.engine.online import online_json, online_response
from fsapp.engine.runtime import ROW, UNTAGGED, ViewBatch, ViewRuntime, project_views, table_file
from fsapp.offline.store import OfflineStore
from fsapp.offline.views import from_registry
from fsapp.registry.catalog import Registry

log = logging.getLogger("fsapp.engine")

REC_PUSH, REC_OFFSETS, REC_ABORT = records.REC_PUSH, records.REC_OFFSETS, records.REC_ABORT
INT64_MIN = np.iinfo(np.int64).min
DEFAULT_CAPACITY = 4096  # rows each online table starts with; tables grow as keys arrive


def now_us() -> int:
    return time.time_ns() // 1000


def _same_projection(ours: pa.Table, duck: pa.Table) -> bool:
    """A compiled projection equals DuckDB's: same columns, same values
    (NaN equal to NaN), each of ours cast to DuckDB's type."""
    if ours.column_names != duck.column_names or ours.num_rows != duck.num_rows:
        return False
    for a, b in zip(ours.columns, duck.columns):
        try:
            a = a.cast(b.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
        if not a.equals(b):  # NaN differs from NaN there: then value by value
            x, y = a.to_pylist(), b.to_pylist()
            if any(not (u == v or (isinstance(u, float) and isinstance(v, float) and u != u and v != v))
                   for u, v in zip(x, y)):
                return False
    return True


def _iso(us: int) -> str:
    try:
        return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(us))).isoformat()
    except OverflowError:
        return f"{int(us)} µs since the epoch"


@dataclass
class PushResult:
    accepted: int
    late: int
    lsn: int

    def to_dict(self) -> dict:
        return {"accepted": self.accepted, "late": self.late, "lsn": self.lsn}


@dataclass
class PreparedPush:
    """A batch checked and converted for every view of its stream (step 1)."""

    stream: str
    table: pa.Table                 # normalised to the stream's declared types: what the WAL holds
    ts: np.ndarray                  # event times, µs
    views: dict = field(default_factory=dict)  # (view, version) -> ViewBatch
    generation: int = 0             # the engine's definitions it was prepared for (Engine.generation)
    work_s: float = 0.0             # seconds its preparing took


class _Waiting:
    """A push without source offsets waiting to be prepared (_prepare_together)."""

    __slots__ = ("stream", "rows", "now", "key", "table", "prepared", "logged", "error", "done", "work_s")

    def __init__(self, stream: str, rows, now: int | None, key: str | None):
        self.stream, self.rows, self.now, self.key = stream, rows, now, key
        self.table = self.prepared = self.logged = self.error = None
        self.done, self.work_s = False, 0.0


def _split_prepared(p: PreparedPush, sizes: list) -> list:
    """A PreparedPush of several batches joined (`sizes` rows each, in
    order) as one PreparedPush per batch, rows counted from its start."""
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    views = {key: vb.split(bounds) for key, vb in p.views.items()}
    return [PreparedPush(p.stream, p.table.slice(int(bounds[i]), int(sizes[i])), p.ts[bounds[i]:bounds[i + 1]],
                         {key: parts[i] for key, parts in views.items()}, p.generation) for i in range(len(sizes))]


# a replay prepares up to this many rows of consecutive push records of a
# stream as one batch (0: each record alone)
REPLAY_GROUP_ROWS = 65_536


class _RunFailed(Exception):
    """A replayed run of records applied as one batch failed (no record of it
    can be told apart): recovery starts over record by record."""


# a tick rewrites moved rows a chunk per hold of the engine lock, sized by the
# last chunk's pace (benches/bench_state.py "longest engine-lock hold of a tick")
TICK_CHUNK = 128      # rows a view's first tick rewrites in its first hold of the engine lock (~0.5 ms at the
                      # starter repo's 7 windows, ~2 ms with 100 events a key)
TICK_HOLD_S = 0.002   # then as many rows a hold as the last hold's pace fits in this (kept per view)
TICK_CHUNK_MIN, TICK_CHUNK_MAX = 16, 4096
TICK_SCAN = 2048      # slots a view's first tick scans for moved keys in its first hold (~0.5-1 ms at 1M light
                      # keys: a cache miss a slot and window; ~2.5 ms with 100 events a key), then as many as the
                      # last scan part's pace fits in TICK_HOLD_S (kept per view)
TICK_SCAN_MIN, TICK_SCAN_MAX = 256, 65_536
COMPACT_WASTE = 0.25          # a window's pool is laid out again when more than this share of it is free
COMPACT_MIN_BYTES = 1 << 20   # and at least this much
COPY_CHECKPOINT_MAX_BYTES = 256 << 20  # checkpoint_mode "auto": copies up to this much window state, else forks
GROW_AHEAD_RETRY_S = 5.0       # after a growth ahead failed (no memory or disk), the next try waits this long
GROW_AHEAD_FREE = 0.1          # an online table grows ahead of need (grow_tables) with less than this share free


def _paced(done: int, took: float, lo: int, hi: int) -> int:
    """How many of what took `took` s for `done` fit in TICK_HOLD_S, within [lo, hi]."""
    return int(min(max(done * TICK_HOLD_S / max(took, 1e-6), lo), hi))


@dataclass
class _Queued:
    """A logged record waiting to be applied (step 3)."""

    lsn: int
    rtype: int
    now: int = 0
    seq: int = 0
    prepared: PreparedPush | None = None
    offsets: dict | None = None
    key: str | None = None
    tags: np.ndarray | None = None  # Kafka partition per batch row (lateness per partition; group mode's keys)
    offline: bool = True  # False: a replay of events this data directory's offline log holds already
    work_s: float = 0.0  # seconds its preparing took (replay_backlog_s)
    result: PushResult | None = None
    error: BaseException | None = None
    done: bool = False


class Engine:
    """The single writer of the online tables. Thread-safe: pushes prepare
    concurrently, are logged and applied in one order under `lock`."""

    def __init__(self, data_dir: str, registry_path: str, *, fsync: str = "always",
                 capacity: int = DEFAULT_CAPACITY, max_keys: int | None = None, max_memory: int | None = None,
                 clock=now_us,
                 keep_checkpoints: int = 2, repo_root: str | None = None, checkpoint_mode: str = "copy",
                 track_partitions: bool = False, grow_ahead: bool = True):
        if checkpoint_mode not in ("copy", "fork", "auto"):
            raise ValueError(f"checkpoint_mode is 'copy', 'fork' or 'auto', got {checkpoint_mode!r}")
        # fork: the checkpoint's state is encoded by a forked child (the lock is
        # held for the fork); copy: by this process from copies of the window
        # state (made beside pushes, the lock held for the keys written
        # meanwhile); auto (fstore serve): copy while those copies are small
        # (_checkpoint_copies), fork past that
        self.checkpoint_mode = checkpoint_mode if hasattr(os, "fork") else "copy"
        self.last_checkpoint_mode: str | None = None
        self.data_dir = os.path.abspath(data_dir)
        # batch file sources' relative paths are relative to the repo root
        self.repo_root = os.path.abspath(repo_root) if repo_root else os.getcwd()
        os.makedirs(self.data_dir, exist_ok=True)
        self.registry = Registry(registry_path)
        if max_keys is not None and max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        if max_memory is not None and max_memory < 1:
            raise ValueError(f"max_memory must be at least 1 byte, got {max_memory}")
        self.capacity = max(1, min(capacity, max_keys or capacity))
        self.max_keys = max_keys
        self.max_memory = max_memory
        self.memory_evictions = 0
        self.clock = clock
        self.fsync = fsync
        self.keep = keep_checkpoints
        self.lock = threading.RLock()
        # one checkpoint at a time (the run loop, materialize and a Kafka revoke may all ask);
        # lock order: _checkpoint_lock, then lock
        self._checkpoint_lock = threading.Lock()
        # pushes without source offsets (REST, SDK) prepare one batch at a time: preparing
        # is Python and numpy under the GIL, so N threads preparing together only hand the
        # GIL back and forth (bench_push, 4 clients: 205-242 pushes/s together against
        # 262-306 one at a time); the holder prepares every push waiting by then
        # (_prepare_together); the fsync wait and the engine lock's apply still overlap
        # other pushes' preparing
        self._prepare_lock = threading.Lock()
        # pushes waiting for _prepare_lock: its holder prepares them all (_prepare_together)
        self._waiting: list[_Waiting] = []
        self._waiting_lock = threading.Lock()
        self._applied = threading.Condition(self.lock)
        self.con = duck.connect()
        self._local = threading.local()
        self._cursors: list = []
        # ingest sources running against this engine (e.g. "kafka"): each has
        # .stats() -> dict, reported by stats() and /metrics
        self.sources: dict = {}
        # pushes without source offsets (REST, SDK): Kafka ingestion yields to them (backpressure)
        self.foreground_pushes = 0
        # Kafka group mode (fsapp.engine.cluster): streams whose keys belong to
        # Kafka partitions (stream -> why a push without offsets or a
        # materialize of their views is refused), and the hook told which rows
        # a tagged push applied to each view: on_applied(runtime, batch, tags),
        # and before_applied(runtime) before it (it may make the rows the push
        # creates hidden from readers: Table.insert_hidden, reset after)
        self.partitioned: dict[str, str] = {}
        self.on_applied = None
        self.before_applied = None
        # every accepted event, late ones included, goes to the offline log
        self.offline = OfflineStore(os.path.join(self.data_dir, "offline"))
        self.offline.view_version = self._offline_view
        self.ckpt_dir = os.path.join(self.data_dir, "checkpoints")
        self.wal_dir = os.path.join(self.data_dir, "wal")
        self.quarantine_dir = os.path.join(self.data_dir, "quarantine")
        self.wal = None
        self.queue: deque[_Queued] = deque()
        self.checkpoint_error: str | None = None  # why the last checkpoint failed (None: it did not)
        self._table_copies: dict = {}  # the last checkpoint's table copies, reused by the next one
        self.checkpoint_failures = 0
        self.compactions, self.compacted_bytes = 0, 0  # windows laid out again (compact) and the bytes given back
        self.heap_released_bytes = 0  # resident memory the allocators gave back after compactions
        self.tables_grown_ahead = 0  # online tables grown before a push found them full (grow_tables)
        # grow_ahead: a push that leaves a table (or its window state) nearly
        # full starts a growth ahead of need in a thread of the engine's own
        # (_grow_ahead_if_needed); stop_growth() ends it within a chunk of its copy
        self.grow_ahead = grow_ahead
        self._grower: threading.Thread | None = None
        self._grower_lock = threading.Lock()
        self._grow_stop = threading.Event()
        self._grow_retry_at = 0.0  # (monotonic) after a failed growth: not before then again
        self._inflight: dict[str, _Queued] = {}  # idempotency key -> its push, logged but not yet applied
        self.evictions_logged: dict = {}
        _remove_stale_table_files(os.path.join(self.data_dir, "online"))
        # Kafka group mode: the partition of each row's events, per view (row id ->
        # partition, cluster.PartitionKeys), kept by checkpoints and replay so that
        # a restarted node resumes the partitions it held (docs/kafka.md, Start)
        self.row_partitions: dict | None = {} if track_partitions else None
        self.generation = 0  # counts definition loads: a batch prepared under older ones is prepared again
        self.partitions_trusted = False  # every row's partition is known (see _recover)
        self._join_runs = True  # a replay may apply a run of records as one batch (_replay_run)
        self._tick_chunk: dict = {}  # view key -> rows a tick rewrites per lock hold (_write_ticked)
        self._tick_scan: dict = {}  # (view key, by windows) -> slots a tick scans per lock hold (tick)
        self._backfilled: list = []  # views the last backfill filled: a checkpoint keeps them
        self.backfills = 0  # views backfilled from the offline log since this engine opened
        self._recover()
        if self.row_partitions is not None:
            self._hide_partitioned()
        self.wal = Wal(self.wal_dir, fsync=fsync, start_lsn=self.applied_lsn + 1)
        if self.wal.last_lsn < self.applied_lsn:
            # the segment holding the checkpoint's LSN is kept until a later checkpoint (and synced before
            # one is written): shorter than that, it was truncated, and the records after it went with it
            last = self.wal.last_lsn
            self.wal.close()
            raise WalCorruption(f"the WAL in {self.wal_dir} ends at LSN {last}, before the checkpoint's LSN "
                                f"{self.applied_lsn}: a segment was truncated or emptied, and the records logged "
                                f"after the checkpoint (acknowledged pushes) with it. {self._restore_hint()}",
                                self.wal_dir, -1)
        self._publish_tables()  # readers switch to the recovered tables only now
        self.register_file_sources()
        if self._backfilled:  # else every open (each CLI command) would backfill them again
            self._checkpoint_after_backfill()

    def _checkpoint_after_backfill(self) -> None:
        """A backfill's state is in no WAL record: a checkpoint keeps it (a
        failed one is retried by the next; until then a start backfills
        again)."""
        self._backfilled = []
        try:
            self.checkpoint()
        except (CheckpointError, OSError) as e:
            log.error("engine: the checkpoint after a backfill failed (%s); the next start backfills again", e)

    # ---- recovery

    def _recover(self, waiting: dict | None = None) -> None:
        """State = the last checkpoint + the WAL after it (see the module
        docstring). Used at open and to rebuild after a failed apply;
        `waiting`: LSN -> queued push whose answer the replay gives. A run
        of records that fails to apply as one batch (`_replay_run`) starts
        it over with every record applied alone, as a record that fails
        alone is set aside."""
        try:
            self._recover_once(waiting)
        except _RunFailed as e:
            log.error("engine: a run of WAL records failed to replay as one batch (%s: %s); replaying record by "
                      "record", type(e.__cause__).__name__, e.__cause__)
            for rt in self.runtimes.values():
                rt.table.close()
            self._join_runs = False
            try:
                self._recover_once(waiting)
            finally:
                self._join_runs = True

    def _recover_once(self, waiting: dict | None) -> None:
        ckpt = load_latest_checkpoint(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else None
        # stream -> {Kafka partition (UNTAGGED: pushes without one): newest applied event time}
        self.watermarks: dict[str, dict[int, int]] = {}
        self.offsets: dict = {}
        # "<topic>/<partition>" -> the offset below which every event of the
        # partition is in this directory's offline log (or was dead-lettered);
        # unlike `offsets` never forgotten (a group-mode replay logs nothing again)
        self.logged_offsets: dict = {}
        self.late_total = 0
        self.replayed = self.quarantined = 0
        self.replay_skipped = 0  # events a view could not take at a replay (_prepare_views_alone)
        self.runtimes: dict[tuple[str, int], ViewRuntime] = {}
        self.streams: dict = {}
        self.normalisers: dict[str, BatchNormaliser] = {}
        meta = ckpt.meta if ckpt else {}
        if self.row_partitions is not None:
            self.row_partitions.clear()
            # a checkpoint without the tags (written without tracking) leaves them unknown
            self.partitions_trusted = ckpt is None or bool(meta.get("row_partitions"))
        self.idempotency = IdempotencyWindow.from_list(meta.get("idempotency"))
        self.late_total = int(meta.get("late_events", 0))
        self._backfill_pending = {(n, int(v)) for n, v in meta.get("backfill_pending", [])}
        self._load_definitions(ckpt)
        # views the checkpoint does not hold (applied while the engine was down, or since it
        # was written): the WAL after it holds only part of their stream's events
        saved = {(r["name"], r["version"]) for r in meta.get("runtimes", [])}
        unfilled = [k for k in self.runtimes if ckpt is not None and (k not in saved or k in self._backfill_pending)]
        unfilled += self._renew_relaid([k for k in self.runtimes if k not in unfilled])
        if ckpt and "stream_watermarks" not in meta:
            # a checkpoint from before lateness was judged per partition: the
            # windows' one watermark is now that of the pushes without one
            for rt in self.runtimes.values():
                for w in rt.windows:
                    if w.watermark != INT64_MIN:
                        w.part_watermarks.setdefault(UNTAGGED, w.watermark)
        self.checkpoint_lsn = self.applied_lsn = ckpt.lsn if ckpt else 0
        self._next_seq = {s: self.offline.log.next_seq(s) for s in self.streams}
        self._check_log_is_whole(ckpt)
        replay_start = time.perf_counter()
        entries = list(read_log(self.wal_dir, after_lsn=self.checkpoint_lsn)) if os.path.isdir(self.wal_dir) else []
        if ckpt is None and not entries:
            self._check_data_is_gone()
        aborted = {records.decode_abort(p) for _, t, p in entries if t == REC_ABORT}
        # consecutive push records of one stream are prepared together (PERF:
        # a record's preparing is mostly fixed cost; benches/bench_state.py
        # "restart incl. replay"), then applied one by one with their own `now`
        group, rows = [], 0
        for lsn, rtype, payload in entries:
            if rtype == REC_ABORT or lsn in aborted:
                continue
            if rtype == REC_PUSH and REPLAY_GROUP_ROWS > 0:
                try:
                    head, table = records.decode_push(payload)
                except Exception as e:  # noqa: BLE001 - a record that does not decode is set aside
                    self._replay_group(group, waiting)
                    group, rows = [], 0
                    self.applied_lsn = lsn
                    self._quarantine(lsn, payload, e)
                    continue
                if group and (head.get("stream") != group[0][2].get("stream") or rows + table.num_rows >
                              REPLAY_GROUP_ROWS or not table.schema.equals(group[0][3].schema)):
                    self._replay_group(group, waiting)
                    group, rows = [], 0
                group.append((lsn, payload, head, table))
                rows += table.num_rows
                continue
            self._replay_group(group, waiting)
            group, rows = [], 0
            self.applied_lsn = lsn
            try:
                q = self._replay(lsn, rtype, payload)
                self.replayed += 1
                if waiting and lsn in waiting and q is not None:
                    waiting[lsn].result = q.result
            except Exception as e:  # noqa: BLE001 - recovery never stops on one record
                self._quarantine(lsn, payload, e)
        self._replay_group(group, waiting)
        if entries:
            self.applied_lsn = entries[-1][0]
        self._backfill(list(dict.fromkeys(unfilled + sorted(self._backfill_pending))))
        # what the next restart replays again until a checkpoint: this replay
        self.work_s, self._ckpt_work_s = (time.perf_counter() - replay_start if entries else 0.0), 0.0

    def _check_log_is_whole(self, ckpt) -> None:
        """Refuses to start on a damaged data directory instead of silently
        serving less: a log that does not start where the checkpoint (or, with
        none, LSN 1) needs it, or a checkpoint with no log after it at all
        (no checkpoint and no record although the store held data:
        _check_data_is_gone; a gap between segments, and mid-log
        corruption, `read_log` refuses itself)."""
        segs = list_segments(self.wal_dir)
        fix = self._restore_hint()
        if ckpt is None and segs and segs[0][0] != 1:
            raise WalCorruption(f"no checkpoint in {self.ckpt_dir}, and the oldest WAL segment {segs[0][1]} "
                                f"starts at LSN {segs[0][0]}: records 1..{segs[0][0] - 1} are missing "
                                f"(checkpoints or segments were deleted). {fix}", segs[0][1], 0)
        if ckpt is not None and ckpt.lsn > 0 and not segs:
            raise WalCorruption(f"checkpoint {ckpt.lsn} is in {self.ckpt_dir} but {self.wal_dir} holds no segment: "
                                f"the log after it (at least the segment holding LSN {ckpt.lsn}) was deleted. "
                                f"{fix}", self.wal_dir, 0)

    def _check_data_is_gone(self) -> None:
        """With no checkpoint and no WAL record (_recover_once asks after
        reading the log, PERF: not reading it twice, ~75 ms a 64 MB segment):
        refuses to start when this store held data before — the log was
        deleted or emptied."""
        held = self._held_data()
        if held:
            raise WalCorruption(f"{self.wal_dir} holds no record and there is no checkpoint, but this store "
                                f"held data ({held}): the write-ahead log was deleted or emptied. "
                                f"{self._restore_hint()}", self.wal_dir, 0)

    def _restore_hint(self) -> str:
        return (f"Restore {self.wal_dir} (and {self.ckpt_dir}) from a backup; or, to start over with an empty "
                f"online store, move {self.data_dir} aside (the offline log in it keeps every event).")

    def _held_data(self) -> str:
        """What says this data directory held data before (empty: nothing)."""
        parts = []
        files = sum(len(self.offline.log.files(s)) for s in self.offline.log.streams())
        if files:
            parts.append(f"{files} offline log file(s)")
        online = os.path.join(self.data_dir, "online")
        rows = 0
        for name in (os.listdir(online) if os.path.isdir(online) else ()):
            if name.endswith(".fst"):
                try:
                    t = Table.open_reader(os.path.join(online, name))
                    rows += t.stats()["puts"]
                    t.close()
                except (OSError, ValueError):
                    continue
        if rows:
            parts.append(f"online tables written {rows} time(s)")
        return ", ".join(parts)

    def _replay_group(self, group: list, waiting: dict | None) -> None:
        """Replays decoded push records [(lsn, payload, head, table)] of one
        stream: their tables prepared as one batch, split back, each applied
        as its own record. If the joined batch cannot be prepared (a record
        the registry no longer takes), each is prepared alone, as ever: one
        that fails is set aside and the others are replayed."""
        if not group:
            return
        stream = group[0][2].get("stream")
        run = self._prepare_run(stream, [t for *_, t in group], self.cursor()) if stream in self.streams else None
        parts = None if run is None else run[1]
        # the new values of the keys the run touched are written once, at its
        # end (each as of the last record touching it), unless rows can die
        # in between (evictions) or a hook reads them
        deferred = self._deferring(len(group))
        tags = None if run is None or deferred is None else self._joinable(group, run[0])
        if tags is not None:
            self._replay_run(group, run[0], parts, tags, deferred, waiting)
            return
        try:
            for i, (lsn, payload, head, table) in enumerate(group):
                self.applied_lsn = lsn
                try:
                    q = self._replay_push(lsn, head, table, None if parts is None else parts[i], deferred)
                    self.replayed += 1
                    if waiting and lsn in waiting and q is not None:
                        waiting[lsn].result = q.result
                except Exception as e:  # noqa: BLE001 - recovery never stops on one record
                    self._quarantine(lsn, payload, e)
        finally:
            self._write_deferred(deferred)

    def _prepare_joined(self, stream: str, tables: list, cur, generation: int | None = None) -> list | None:
        """Several normalised batches of a stream prepared as one and split
        back (PERF: a batch's preparing is mostly fixed cost): one
        PreparedPush per table, or None for fewer than two tables or when
        the joined batch is refused (then each is prepared alone, so that
        each gets its own answer)."""
        run = self._prepare_run(stream, tables, cur, generation)
        return None if run is None else run[1]

    def _prepare_run(self, stream: str, tables: list, cur,
                     generation: int | None = None) -> tuple[PreparedPush, list] | None:
        """`_prepare_joined`, with the joined PreparedPush too."""
        if len(tables) < 2:
            return None
        try:
            whole = self._prepare_table(stream, pa.concat_tables(tables).combine_chunks(), cur, generation)
            return whole, _split_prepared(whole, [t.num_rows for t in tables])
        except Exception:  # noqa: BLE001 - one of them is refused: the caller prepares each alone
            return None

    def _joinable(self, group: list, whole: PreparedPush) -> np.ndarray | None:
        """Whether a run of push records (`whole`: prepared as one) may be
        applied as one batch and leave what applying them one by one leaves:
        no hooks nor partition tracking, every record's partition tags whole,
        and no windowed view holding an event or given one at or after its
        record's `now` (held events are released by later records' `now`, in
        event-time order). Then the run's rows' partitions (UNTAGGED for a
        record without), else None."""
        if not self._join_runs or self.row_partitions is not None or self.before_applied is not None:
            return None
        tags = []
        for _, _, head, table in group:
            t = records.decode_runs(head["parts"]) if "parts" in head else \
                np.full(table.num_rows, UNTAGGED, dtype=np.int64)
            if t.size != table.num_rows:
                return None  # record by record: that record is set aside
            tags.append(t)
        row_now = np.repeat(np.array([head["now"] for _, _, head, _ in group], dtype=np.int64),
                            [t.num_rows for *_, t in group])
        for key, vb in whole.views.items():
            rt = self.runtimes.get(key)
            if rt is not None and rt.aggregated and (rt.held_ts.size or (vb.ts >= row_now[vb.rows]).any()):
                return None
        return np.concatenate(tags).astype(np.int64, copy=False)

    def _replay_run(self, group: list, whole: PreparedPush, parts: list, tags: np.ndarray, deferred: dict,
                    waiting: dict | None) -> None:
        """Replays a run of push records of one stream as one batch (PERF: a
        record's lateness check and window updates are mostly fixed cost):
        the late mask, each windowed view's rows and window updates in one
        call each, over the records' events in order, which is what the
        records one by one do when `_joinable` holds; plain views take each
        record with its own `now`. `tags`: each row's Kafka partition (the
        lateness rules keep a watermark per partition, in arrival order
        within each). Then each record's own part (offline log, offsets,
        answer, idempotency key), and the touched keys' values, each as of
        the last record touching it. A failure cannot be pinned on one
        record: _RunFailed (recovery starts over record by record)."""
        stream = whole.stream
        sizes = [t.num_rows for *_, t in group]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        nows = np.array([head["now"] for _, _, head, _ in group], dtype=np.int64)
        try:
            late, moved = self._late_mask(stream, whole.ts, tags)
            keep = ~late
            row_now = np.repeat(nows, sizes)
            for key, vb in whole.views.items():
                rt = self.runtimes.get(key)
                if rt is None:
                    continue
                try:
                    if rt.aggregated:
                        applied = vb.take(keep)
                        rt.apply_run(applied, row_now[applied.rows], int(nows.max()), tags[applied.rows],
                                     deferred.setdefault(key, []))
                    else:
                        for i, p in enumerate(parts):
                            part = p.views[key].take(keep[bounds[i]:bounds[i + 1]])
                            rt.apply(part, int(nows[i]), tags[bounds[i]:bounds[i + 1]][part.rows])
                finally:
                    rt.table.insert_hidden = False
                self._note_evictions(rt)
            if whole.table.num_rows:
                self.watermarks.setdefault(stream, {}).update(moved)
            for i, (lsn, _payload, head, _table) in enumerate(group):
                self.applied_lsn = lsn
                q = self._queued_from(lsn, head, parts[i], tags[bounds[i]:bounds[i + 1]] if "parts" in head else None)
                self._settle(q, int(late[bounds[i]:bounds[i + 1]].sum()), self._logs_offline(q, head))
                self._after_replayed(q, head)
                self.replayed += 1
                if waiting and lsn in waiting:
                    waiting[lsn].result = q.result
            self._write_deferred(deferred)
        except Exception as e:
            raise _RunFailed(f"records {group[0][0]}..{group[-1][0]}") from e

    def _deferring(self, records: int) -> dict | None:
        """For applying `records` records in a row: {} to collect the rows
        whose values are written after the last (`_write_deferred`), or None
        (one record; or rows may die in between: max_keys / max_memory
        evictions; or an ingest hook reads them)."""
        return {} if (records > 1 and self.max_keys is None and self.max_memory is None
                      and self.on_applied is None) else None

    def _write_deferred(self, deferred: dict | None) -> None:
        for key, rows in (deferred or {}).items():
            if key in self.runtimes:
                self.runtimes[key].write_deferred(rows)

    def _replay(self, lsn: int, rtype: int, payload) -> _Queued | None:
        if rtype == REC_OFFSETS:
            self._consumed(records.decode_offsets(payload), logged=True)
            return None
        if rtype != REC_PUSH:
            raise EngineError(f"unknown WAL record type {rtype}")
        head, table = records.decode_push(payload)
        return self._replay_push(lsn, head, table)

    def _replay_push(self, lsn: int, head: dict, table: pa.Table, prepared: PreparedPush | None = None,
                     deferred: dict | None = None) -> _Queued | None:
        stream = head["stream"]
        if stream not in self.streams:
            return None  # the stream was dropped from the registry since
        if prepared is None:
            try:
                prepared = self._prepare_table(stream, table, self.cursor())
            except (BatchError, KeyEncodingError, duckdb.Error) as e:
                prepared = self._prepare_views_alone(stream, table, lsn, e)
        tags = records.decode_runs(head["parts"]) if "parts" in head else None
        if tags is not None and tags.size != table.num_rows:
            raise EngineError(f"the record's partitions cover {tags.size} rows of its {table.num_rows}")
        q = self._queued_from(lsn, head, prepared, tags)
        self._apply_push(q, log_offline=self._logs_offline(q, head), deferred=deferred)
        self._after_replayed(q, head)
        return q

    def _event_times(self, stream: str, table: pa.Table) -> np.ndarray:
        """A normalised batch's event times, µs."""
        if not table.num_rows:
            return np.zeros(0, np.int64)
        col = table.column(self.streams[stream].timestamp).cast(pa.int64())
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _prepare_views_alone(self, stream: str, table: pa.Table, lsn: int, why: BaseException) -> PreparedPush:
        """A logged record the current views cannot all take (a view applied
        since it was logged, keyed by a column with values its table cannot
        hold, or reading a column whose type changed): prepared view by view,
        and a view that cannot take it skips it (logged, counted in
        `replay_skipped`) — the views that took it when it was acknowledged
        still get its events. Before, the whole record was set aside, and
        acknowledged events were lost online for every view."""
        cur = self.cursor()
        prepared = PreparedPush(stream, table, self._event_times(stream, table), generation=self.generation)
        batch = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        cur.register("__batch", batch)
        try:
            for key, rt in self.runtimes.items():
                if rt.stream is None or rt.stream.name != stream:
                    continue
                try:
                    prepared.views[key] = rt.prepare(cur, batch)
                except (BatchError, KeyEncodingError, duckdb.Error) as e:
                    self.replay_skipped += table.num_rows
                    self._backfill_pending.add(key)  # rebuilt from the log after the replay, event by event
                    log.error("recovery: feature view %s@v%d cannot take WAL record %d (%s: %s); it skips the "
                              "record's %d events and is rebuilt from the offline log after the replay (the "
                              "other views keep them)", key[0], key[1], lsn, type(e).__name__,
                              str(e).strip().splitlines()[0], table.num_rows)
        finally:
            cur.unregister("__batch")
        log.warning("recovery: WAL record %d was prepared view by view (%s)", lsn, why)
        return prepared

    @staticmethod
    def _queued_from(lsn: int, head: dict, prepared: PreparedPush, tags: np.ndarray | None = None) -> _Queued:
        """A replayed push record as the queue held it."""
        return _Queued(lsn, REC_PUSH, head["now"], head["seq"], prepared, head.get("offsets") or {}, head.get("key"),
                       tags, offline=head.get("offline", True))

    def _logs_offline(self, q: _Queued, head: dict) -> bool:
        """Whether a replayed record's events go to the offline log: not
        those already in a flushed (or still buffered) offline file."""
        return q.offline and head["seq"] >= self.offline.log.next_seq(q.prepared.stream)

    def _after_replayed(self, q: _Queued, head: dict) -> None:
        if q.offline:
            stream = q.prepared.stream
            self._next_seq[stream] = max(self._next_seq.get(stream, 0), head["seq"] + q.prepared.table.num_rows)

    def _quarantine(self, lsn: int, payload, exc: BaseException) -> None:
        os.makedirs(self.quarantine_dir, exist_ok=True)
        path = os.path.join(self.quarantine_dir, f"{lsn:020d}.rec")
        with open(path, "wb") as f:
            f.write(bytes(payload))
        self.quarantined += 1
        log.error("recovery: WAL record %d could not be replayed (%s: %s); it is set aside in %s and recovery "
                  "goes on", lsn, type(exc).__name__, exc, path)

    # ---- definitions

    def _load_definitions(self, ckpt) -> None:
        self.generation += 1
        snap = self.registry.snapshot()
        self.streams = {e.name: e.definition for e in snap.of_kind("stream")}
        wanted = {(e.name, e.version) for e in snap.of_kind("feature_view")}
        on_demand = {(e.name, e.version): e for e in snap.of_kind("on_demand_view")}
        for svc in snap.of_kind("feature_service"):  # services pin view versions
            for ref in svc.resolved["features"]:
                view, _, rest = ref.partition("@v")
                key = (view, int(rest.split(":")[0])) if rest else (view, snap.get(view).version)
                if key in on_demand or self.registry.get(*key).kind == "on_demand_view":
                    on_demand.setdefault(key, self.registry.get(*key))
                else:
                    wanted.add(key)
        for od in on_demand.values():  # on-demand views read pinned view versions
            for ref in od.resolved["inputs"]:
                view, _, rest = ref.partition("@v")
                wanted.add((view, int(rest.split(":")[0])))
        for key in [k for k in self.runtimes if k not in wanted]:
            # a version no longer live nor pinned (a restart would not start it): kept running, it
            # went on projecting its stream, and after a column it read was renamed or dropped
            # (`apply --allow-incompatible`) every push to the stream failed on its projection
            self.runtimes.pop(key).table.close()
            if self.row_partitions is not None:
                self.row_partitions.pop(key, None)
        self._remove_unserved_tables(wanted)
        saved = {(r["name"], r["version"]): r for r in (ckpt.meta.get("runtimes", []) if ckpt else [])}
        if ckpt:
            if "stream_watermarks" in ckpt.meta:
                self.watermarks = {k: {int(p): int(w) for p, w in v.items()}
                                   for k, v in ckpt.meta["stream_watermarks"].items()}
            else:  # before lateness was judged per partition: one watermark per stream
                self.watermarks = {k: {UNTAGGED: int(v)} for k, v in ckpt.meta.get("watermarks", {}).items()}
            self.offsets = ckpt.meta.get("offsets", {})
            self.logged_offsets = dict(ckpt.meta.get("logged_offsets", self.offsets))
        for name, version in sorted(wanted):
            if (name, version) in self.runtimes:
                continue
            info = self.registry.feature_view(name, version)
            source = info.definition.source
            latest = snap.get(name) is not None and snap.get(name).version == version
            if latest:  # the offline store serves the latest version of every view
                entities = [self.registry.get(e).definition for e in info.definition.entities]
                src = self.streams.get(source) or self.registry.get(source).definition
                self.offline.add_view(from_registry(info.definition, src, entities, info.features))
            if not info.definition.online or (source not in self.streams and info.definition.is_aggregated):
                continue  # training sets only (online = FALSE; windows over a batch file source)
            table = windows = meta = None
            if (name, version) in saved:
                key = f"{name}@v{version}"
                table = Table.from_snapshot(ckpt.blobs[f"{key}/table"], path=table_file(self.data_dir, name, version),
                                            publish=False)
                # rows a Kafka group member hid while it rebuilt their partition
                # (fsapp.engine.cluster): a start in group mode drops them anyway,
                # any other start serves them
                table.show_rows(table.hidden_rows())
                windows = [WindowView.from_bytes(ckpt.blobs[f"{key}/window{i}"])
                           for i in range(saved[(name, version)]["windows"])]
                tags = ckpt.blobs.get(f"{key}/partitions")
                if self.row_partitions is not None and tags is not None:
                    self.row_partitions[(name, version)] = np.array(tags, dtype=np.int32)
                meta = saved[(name, version)]
                if table.schema != info.online_schema():  # a newer fstore changed a column's kind
                    old, table = table, table.with_schema(info.online_schema(), path=table.path, publish=False)
                    old.close()
            # a plain view over a file source gets an online table that materialize fills
            self.runtimes[(name, version)] = ViewRuntime(info, self.streams.get(source), self.data_dir,
                                                         self.capacity, table=table, windows=windows,
                                                         max_keys=self.max_keys, meta=meta)
        keys = {}
        for rt in self.runtimes.values():
            if rt.stream is not None:
                keys.setdefault(rt.stream.name, set()).update(rt.key_names)
        self.normalisers = {name: BatchNormaliser(s, self.con, keys.get(name, ())) for name, s in self.streams.items()}
        for name, s in self.streams.items():
            self.offline.declare_stream(name, [(c.name, c.type) for c in s.columns])

    def _remove_unserved_tables(self, wanted: set) -> None:
        """Removes the online table files of view versions this engine does
        not serve: HTTP workers read tables by file, and went on answering a
        read of such a version (`view@v1:feature`) with its values frozen when
        the engine stopped serving it, as PRESENT; without the file they
        answer 404, as the engine does."""
        online = os.path.join(self.data_dir, "online")
        if not os.path.isdir(online):
            return
        for name in os.listdir(online):
            view, sep, version = name[:-len(".fst")].rpartition("@v") if name.endswith(".fst") else ("", "", "")
            if sep and version.isdigit() and (view, int(version)) not in wanted:
                try:
                    os.unlink(os.path.join(online, name))
                except FileNotFoundError:
                    pass

    def _publish_tables(self) -> None:
        for rt in self.runtimes.values():
            rt.table.publish()

    def reload(self) -> None:
        """Starts runtimes for definitions applied since. A new view (or
        version) fed by a stream is backfilled from the offline log in the
        same hold of the lock (`_backfill`): it serves what a training set
        reads from its first read on, and no checkpoint holds it half-built."""
        with self.lock:
            before = set(self.runtimes)
            self._load_definitions(None)
            for s in self.streams:
                self._next_seq.setdefault(s, self.offline.log.next_seq(s))
            renewed = self._renew_relaid([k for k in self.runtimes if k in before])
            self._backfill([k for k in self.runtimes if k not in before] + renewed)
            self._publish_tables()
        self.register_file_sources()
        if self._backfilled:
            self._checkpoint_after_backfill()

    def _renew_relaid(self, keys) -> list:
        """Views whose stream's allowed lateness changed since their window
        state was laid out (a compatible change: the view keeps its version)
        get new, empty window state, which `_backfill` then rebuilds from the
        log: the old rings and session counts judged lateness by the old
        value, and dropped events the engine admitted by the new one (3h
        instead of 0s: every out-of-order event, lost online, counted as no
        late event either). Returns the views renewed."""
        renewed = []
        for key in keys:
            rt = self.runtimes[key]
            stream = self.streams.get(rt.stream.name) if rt.stream is not None else None
            if stream is None or not rt.lateness_changed(stream):
                continue
            if not self._own_log_feeds(rt):
                log.warning("feature view %s@v%d: stream %s's allowed lateness changed; in Kafka group mode its "
                            "window state keeps the old one until its partitions are rebuilt", key[0], key[1],
                            stream.name)
                continue
            rt.renew_windows(stream)
            renewed.append(key)
            log.info("feature view %s@v%d: stream %s's allowed lateness changed; its window state is rebuilt from "
                     "the offline event log", key[0], key[1], stream.name)
        return renewed

    def _own_log_feeds(self, rt: ViewRuntime) -> bool:
        """Whether this engine's offline log holds every event of the view's
        stream, so the view can be rebuilt from it: a view over a stream, and
        not in Kafka group mode (a member's log holds the partitions it has
        owned; they are rebuilt as they are assigned)."""
        return rt.stream is not None and rt.stream.name not in self.partitioned and self.row_partitions is None

    def _backfill(self, keys) -> None:
        """Fills new runtimes of views fed by a stream with every event of it
        in the offline log (late ones included, in (ts, seq) order, as a
        training set reads them): a view applied to a store that already
        has events served only the events pushed after it (counts of 0 where
        its training set counted 19) until someone ran materialize. Windowed
        views rebuild each key's state from its events; plain views take
        each key's latest row. A backfill that cannot read the log is logged
        and tried again at the next start (`backfill_pending` in the
        checkpoint). Not for streams whose keys a Kafka group shares out
        (their partitions are rebuilt as they are assigned)."""
        todo = [k for k in keys if self._own_log_feeds(self.runtimes[k])]
        self._backfilled = []
        if not todo:
            return
        self.offline.log.flush()
        now = self.clock()
        for key in todo:
            rt = self.runtimes[key]
            started = time.perf_counter()
            try:
                keys_written = self._rebuild_from_log(rt, -(1 << 62), 1 << 62, now)
            except Exception as e:  # noqa: BLE001 - a reload or a start goes on without it
                self._backfill_pending.add(key)
                log.error("feature view %s@v%d: its backfill from the offline event log failed (%s); it serves the "
                          "events pushed since it was applied, and the next start tries again (or run fstore "
                          "materialize)", key[0], key[1], str(e).strip().splitlines()[0])
                continue
            self._backfill_pending.discard(key)
            self._backfilled.append(key)
            self.backfills += 1
            if keys_written:
                log.info("feature view %s@v%d: backfilled %d keys from the offline event log in %.2f s", key[0],
                         key[1], keys_written, time.perf_counter() - started)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's DuckDB connection (a connection serves one query at a time)."""
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self.con.cursor()
            self._cursors.append(cur)
        return cur

    # ---- writes: prepare

    def prepare(self, stream: str, rows) -> PreparedPush:
        """Step 1 of a push: normalise, project and convert `rows` for every
        view of `stream`, raising what the push would raise for their
        content (BatchError, KeyEncodingError, UnknownStreamError). No state
        changes; thread-safe."""
        started, generation = time.perf_counter(), self.generation
        if stream not in self.streams:
            raise self._no_stream(stream)
        cur = self.cursor()
        table, _ = self.normalisers[stream].normalise(rows, cur)
        prepared = self._prepare_table(stream, table, cur, generation)
        prepared.work_s = time.perf_counter() - started
        return prepared

    def _no_stream(self, stream: str) -> UnknownStreamError:
        return UnknownStreamError(f"no stream {stream!r}; streams are: {', '.join(sorted(self.streams)) or 'none'}")

    def _prepare_table(self, stream: str, table: pa.Table, cur, generation: int | None = None) -> PreparedPush:
        """`generation`: the definitions `table` was normalised under (default: now)."""
        generation = self.generation if generation is None else generation
        prepared = PreparedPush(stream, table, self._event_times(stream, table), generation=generation)
        views = [(key, rt) for key, rt in self.runtimes.items() if rt.stream is not None and rt.stream.name == stream]
        if not table.num_rows or not views:
            return prepared
        batch = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        queried = [rt for _, rt in views if rt.bare is None]
        # compiled projections (numpy) where they hold for this batch; DuckDB
        # for the rest, and for a compiled one's first batches, to check it
        direct = {}
        for rt in queried:
            if rt.compiled is None:
                continue
            try:
                p = rt.compiled(batch)
            except Exception:  # noqa: BLE001 - a bug in it must not refuse a batch DuckDB takes
                log.exception("feature view %s: its compiled SELECT failed on a batch; DuckDB projects it "
                              "from now on", rt.name)
                rt.compiled = None
                continue
            if p is not None:
                direct[rt] = p
        queried = [rt for rt in queried if rt not in direct or rt.shadow_left > 0]
        projected = {}
        if queried:
            cur.register("__batch", batch)
            try:
                projected = project_views(cur, queried)
            except duckdb.Error as e:
                # say which view: run them one by one (rare: the batch is refused anyway)
                for rt in queried:
                    rt.prepare(cur, batch)
                raise BatchError(f"stream {stream}: a view's SELECT fails on this batch: "
                                 f"{str(e).strip().splitlines()[0]}") from None
            finally:
                cur.unregister("__batch")
        for rt, p in direct.items():
            if rt not in projected:
                projected[rt] = p
            elif not _same_projection(p, projected[rt]):
                log.error("feature view %s: its compiled SELECT disagrees with DuckDB's on a batch; DuckDB "
                          "projects it from now on (please report: %s)", rt.name, rt.info.projection_items())
                rt.compiled = None
            else:
                rt.shadow_left -= 1
        for key, rt in views:
            vb = rt.prepare(cur, batch, projected.get(rt))
            if self.max_keys is not None and rt.aggregated:
                n = rt.distinct_keys(vb)
                if n > self.max_keys:
                    raise BatchError(f"this batch has {n} distinct keys for feature view {rt.name}, more than "
                                     f"the online store holds (max_keys {self.max_keys}); split the batch or "
                                     "raise max_keys")
            prepared.views[key] = vb
        return prepared

    def validate(self, stream: str, rows) -> None:
        """Raises what push would raise for these rows (their content, and
        events too far ahead of the engine clock), logging and applying
        nothing. Lets a source find the bad rows of a refused batch."""
        prepared = self.prepare(stream, rows)
        self._check_future(prepared, self.clock())

    def _check_future(self, p: PreparedPush, now: int) -> None:
        bound = self.streams[p.stream].max_future
        ahead = np.flatnonzero(p.ts > now + bound)
        if ahead.size:
            rows = ahead[:5].tolist()
            err = BatchError(f"stream {p.stream}: {ahead.size} event(s) (row(s) {rows}{'...' if ahead.size > 5 else ''})"
                             f" are more than max_future ({bound // 1_000_000} s) ahead of the engine clock "
                             f"({_iso(now)}), e.g. {_iso(p.ts[ahead[0]])}; send event times in µs/ms/s since the "
                             "epoch or ISO-8601, or raise the stream's max_future")
            err.rows = ahead.tolist()
            raise err

    # ---- writes: log and commit

    def push(self, stream: str, rows, *, now: int | None = None, offsets: dict | None = None,
             idempotency_key: str | None = None, tags: np.ndarray | None = None,
             offline: bool = True, prepared: PreparedPush | None = None) -> PushResult:
        """Prepares, logs, then applies a batch; returns once it is durable
        under the fsync policy. A retry with an `idempotency_key` seen before
        returns the first answer and applies nothing. `tags`: the Kafka
        partition of each row (logged): lateness is judged per partition, and
        `on_applied` is told them.
        `offline=False`: a source replaying events below `logged_offsets`
        (a group-mode reassignment): applied online, not logged offline again.
        `prepared`: a source's batch prepared already (`prepare(stream, rows)`,
        e.g. by a read-ahead thread); prepared again if the definitions
        changed since."""
        if not offline and not offsets:
            raise ValueError("offline=False is for a source's replay: pass the offsets it reaches")
        key = _check_key(idempotency_key)
        if offsets is None:
            if stream in self.partitioned:
                raise PartitionOwned(self.partitioned[stream])
            self.foreground_pushes += 1  # GIL-atomic enough for a hint
        if key is not None:
            first = self._answer_for(key)
            if first is not None:
                return first
        # (a source's batch prepares beside them: a REST push never waits for a Kafka batch's preparing)
        if offsets is None:
            w = self._prepare_together(stream, rows, now, key)
            if isinstance(w.logged, _Queued):
                return self._commit(w.logged)
            if w.logged is not None:
                return w.logged
            prepared, prepare_s = w.prepared, w.work_s
        else:
            if prepared is None or prepared.stream != stream:
                prepared = self.prepare(stream, rows)
            prepare_s = prepared.work_s
        if tags is not None:
            tags = np.asarray(tags, dtype=np.int64)
            if tags.shape != (prepared.table.num_rows,) or (tags.size and tags.min() < 0):
                raise ValueError(f"tags: one partition number (>= 0) per row, {prepared.table.num_rows} of them")
        with self.lock:
            if prepared.generation != self.generation:  # prepared before a reload: its views may not be these
                prepared = self.prepare(stream, rows)
            logged = self._log(stream, prepared, now, key, offsets, tags, offline, prepare_s)
        result = self._commit(logged) if isinstance(logged, _Queued) else logged
        self._grow_ahead_if_needed()
        return result

    def _log(self, stream: str, prepared: PreparedPush, now: int | None, key: str | None, offsets: dict | None,
             tags: np.ndarray | None, offline: bool, work_s: float) -> "PushResult | _Queued":
        """Step 2, under the lock: the push's answer (an idempotency key
        answered before, or no rows), or its record appended to the WAL
        without waiting and queued."""
        if key is not None:
            first = self._answer_for(key)
            if first is not None:
                return first
        now = self.clock() if now is None else now
        self._check_future(prepared, now)
        n = prepared.table.num_rows
        if n == 0 and not offsets:
            return PushResult(0, 0, self.applied_lsn)
        seq = self._next_seq.get(stream, 0)
        lsn = self.wal.append(REC_PUSH, records.encode_push(stream, now, seq, prepared.table, offsets, key,
                                                            offline, tags), wait=False)
        if offline:
            self._next_seq[stream] = seq + n
        q = _Queued(lsn, REC_PUSH, now, seq, prepared, offsets, key, tags, offline=offline, work_s=work_s)
        self.queue.append(q)
        if key is not None:
            self._inflight[key] = q
        return q

    def _prepare_together(self, stream: str, rows, now: int | None, key: str | None) -> "_Waiting":
        """Steps 1 and 2 for a push without source offsets (REST, SDK):
        pushes that wait for each other prepare one at a time
        (`_prepare_lock`), and the one that gets the lock prepares every push
        waiting by then — each normalised alone (its own errors), those of a
        stream as one batch, split back (PERF: a push's preparing is mostly
        fixed cost; benches/bench_push.py) — and logs them in one hold of the
        engine lock, so that they share an fsync and their apply (`_drain`).
        Whatever the joined batch refuses is prepared push by push, so each
        push gets exactly its own answer. A push with an idempotency key is
        logged by its own thread (the key may be in flight in another push
        of the batch, whose thread waits for this one). Returns this push's
        _Waiting: `logged` (its queued record or its answer), or `prepared`
        (and `work_s`, its share) for the caller to log."""
        me = _Waiting(stream, rows, now, key)
        with self._waiting_lock:
            self._waiting.append(me)
        with self._prepare_lock:
            if not me.done:
                with self._waiting_lock:
                    batch, self._waiting = self._waiting, []
                self._prepare_batch(batch)
        if me.error is not None:
            raise me.error
        return me

    def _prepare_batch(self, batch: list) -> None:
        """Prepares (and logs) the waiting pushes of `_prepare_together`;
        every one ends done, with `prepared` or `error`."""
        started, generation = time.perf_counter(), self.generation
        try:
            cur = self.cursor()
            by_stream: dict[str, list] = {}
            for w in batch:
                try:
                    if w.stream not in self.streams:
                        raise self._no_stream(w.stream)
                    w.table, _ = self.normalisers[w.stream].normalise(w.rows, cur)
                    by_stream.setdefault(w.stream, []).append(w)
                except Exception as e:  # noqa: BLE001 - this push's own answer
                    w.error = e
            for stream, ws in by_stream.items():
                # (an empty push, `[]`, has no columns to join with the others': prepared alone, cheaply)
                full = [w for w in ws if w.table.num_rows]
                parts = self._prepare_joined(stream, [w.table for w in full], cur, generation)
                joined = dict(zip(map(id, full), parts)) if parts is not None else {}
                for w in ws:
                    if id(w) in joined:
                        w.prepared = joined[id(w)]
                        continue
                    try:
                        w.prepared = self._prepare_table(stream, w.table, cur, generation)
                    except Exception as e:  # noqa: BLE001 - this push's own answer
                        w.error = e
            each = (time.perf_counter() - started) / len(batch)
            if len(batch) > 1:
                with self.lock:
                    for w in batch:
                        if w.prepared is not None and w.key is None:
                            try:
                                if w.prepared.generation != self.generation:  # a reload since
                                    w.prepared = self.prepare(w.stream, w.rows)
                                w.logged = self._log(w.stream, w.prepared, w.now, None, None, None, True, each)
                            except Exception as e:  # noqa: BLE001 - this push's own answer
                                w.error = e
        finally:
            share = (time.perf_counter() - started) / max(len(batch), 1)
            for w in batch:
                if w.prepared is None and w.error is None:
                    w.error = EngineError("preparing this push was interrupted; nothing of it was logged")
                w.work_s, w.table, w.rows, w.done = share, None, None, True

    def _answer_for(self, key: str) -> PushResult | None:
        """The first answer to a push with this idempotency key: known, or in
        flight (then wait for it); None for a new key."""
        with self.lock:
            while True:
                known = self.idempotency.get(key)
                if known is not None:
                    return PushResult(known["accepted"], known["late"], known["lsn"])
                q = self._inflight.get(key)
                if q is None:
                    return None
                if q.done:
                    if q.error is not None:
                        return None  # the first attempt failed: this one is a new push
                    return q.result
                self._applied.wait(1.0)

    def advance_offsets(self, offsets: dict) -> int:
        """Records source offsets consumed without rows (e.g. dead-lettered
        messages) durably, so a restart does not consume them again. Returns
        the record's LSN."""
        if not offsets:
            return self.applied_lsn
        with self.lock:
            lsn = self.wal.append(REC_OFFSETS, records.encode_offsets(offsets), wait=False)
            q = _Queued(lsn, REC_OFFSETS, offsets=dict(offsets))
            self.queue.append(q)
        self._commit(q)
        return lsn

    def _commit(self, q: _Queued) -> PushResult | None:
        """Step 3: waits until `q` is durable, applies the queue in LSN order
        up to the durable point (whoever gets the lock first applies for the
        others too), and returns q's answer or raises its error."""
        try:
            self.wal.wait(q.lsn)
        except BaseException as e:
            # not acknowledged; the log refuses further writes (poisoned) or is closed
            with self.lock:
                self._fail_queue(e)
            raise
        with self.lock:
            self._drain()
            while not q.done:  # an earlier record is still waiting for its fsync
                self._applied.wait(0.05)
                self._drain()
        if q.error is not None:
            raise q.error
        return q.result

    def _drain(self) -> None:
        """Under the lock: applies queued records that are durable, in order.
        When several are (pushes that shared an fsync), the new values of
        the keys they touched are written once, after the last (as a
        replay's run does: ViewRuntime.write_deferred), and before any of
        their pushes is answered: the lock is held until then."""
        durable = self.wal.acknowledged_lsn
        # (the queue is in LSN order: several are durable when the second is)
        deferred = self._deferring(2 if len(self.queue) > 1 and self.queue[1].lsn <= durable else 1)
        try:
            self._drain_ready(durable, deferred)
        finally:
            self._write_deferred(deferred)

    def _drain_ready(self, durable: int, deferred: dict | None) -> None:
        while self.queue and self.queue[0].lsn <= durable:
            q = self.queue.popleft()
            try:
                if q.rtype == REC_OFFSETS:
                    self._consumed(q.offsets, logged=True)
                else:
                    started = time.perf_counter()
                    self._apply_push(q, log_offline=q.offline, deferred=deferred)
                    self.work_s += q.work_s + time.perf_counter() - started
                self.applied_lsn = q.lsn
            except Exception as e:  # noqa: BLE001 - a logged record failed to apply: a bug; see _abort
                if deferred is not None:
                    deferred.clear()  # the state is rebuilt from the log: these rows are not its
                self._abort(q, e)
                return
            finally:
                q.done = True
                if q.key is not None:
                    self._inflight.pop(q.key, None)
                self._applied.notify_all()

    def _apply_push(self, q: _Queued, log_offline: bool = True, deferred: dict | None = None) -> None:
        """Applies a logged batch. `deferred` (a replay's run of records, or
        records drained together): {view key: list} collecting the rows whose
        values are written after the last record (ViewRuntime.write_deferred),
        not after each."""
        p = q.prepared
        stream = p.stream
        parts = np.full(p.ts.size, UNTAGGED, dtype=np.int64) if q.tags is None else q.tags
        late, moved = self._late_mask(stream, p.ts, parts)
        nlate = int(late.sum())
        keep = ~late
        for key, vb in p.views.items():
            rt = self.runtimes.get(key)
            if rt is not None:
                applied = vb.take(keep) if nlate else vb
                tagged = q.tags is not None and self.on_applied is not None
                if tagged and self.before_applied is not None:
                    self.before_applied(rt)
                try:
                    if deferred is None:
                        rt.apply(applied, q.now, parts[applied.rows])
                    else:
                        rt.apply(applied, q.now, parts[applied.rows], deferred=deferred.setdefault(key, []))
                finally:
                    rt.table.insert_hidden = False
                self._note_evictions(rt)
                if tagged:
                    self.on_applied(rt, applied, q.tags)
                elif q.tags is not None and self.row_partitions is not None and len(applied):
                    self._tag_rows(rt, applied, q.tags)  # a replay: no ingest hook yet
        if self.max_memory is not None:
            self._bound_memory()
        if p.table.num_rows:
            self.watermarks.setdefault(stream, {}).update(moved)
        self._settle(q, nlate, log_offline)
        if p.generation != self.generation and p.table.num_rows and log_offline:
            self._catch_up_new_views(q)

    def _catch_up_new_views(self, q: _Queued) -> None:
        """A record logged before a reload and applied after it (its fsync
        wait spanned the reload) was prepared for the views before: a view
        the reload started (and backfilled from the log, which did not hold
        the record yet) missed its events for good. Those views rebuild the
        keys with events in the record's time span from the log, which now
        holds it."""
        p = q.prepared
        new = [rt for key, rt in self.runtimes.items()
               if key not in p.views and self._own_log_feeds(rt) and rt.stream.name == p.stream]
        if not new:
            return
        self.offline.log.flush(p.stream)
        for rt in new:
            self._rebuild_from_log(rt, int(p.ts.min()), int(p.ts.max()) + 1, q.now)

    def _settle(self, q: _Queued, nlate: int, log_offline: bool) -> None:
        """An applied push record's part besides the views' state: its events
        in the offline log, its late count, its source offsets, its answer
        (kept under its idempotency key)."""
        p = q.prepared
        if p.table.num_rows and log_offline:
            self.offline.log.append(p.stream, p.table, timestamp=self.streams[p.stream].timestamp,
                                    created_ts=q.now, seq=q.seq)
        self.late_total += nlate
        if q.offsets:
            self._consumed(q.offsets, logged=q.offline)
        q.result = PushResult(p.table.num_rows - nlate, nlate, q.lsn)
        if q.key is not None:
            self.idempotency.put(q.key, q.now, q.result.to_dict())

    def _consumed(self, offsets: dict, *, logged: bool) -> None:
        """A source's offsets reached by an applied record; `logged`: its
        events (or dead letters) are in the offline log up to them too."""
        self.offsets.update(offsets)
        if logged:
            held = self.logged_offsets
            for k, off in offsets.items():
                if off > held.get(k, 0):
                    held[k] = off

    def _abort(self, q: _Queued, exc: Exception) -> None:
        """A logged record failed to apply. Tombstone it, rebuild the state
        from the checkpoint and the log (which now skips it), and fail the
        push; records queued after it are applied by the rebuild."""
        log.exception("engine: WAL record %d could not be applied; it is aborted (REC_ABORT) and the state rebuilt",
                      q.lsn)
        q.error = EngineError(f"the batch could not be applied ({type(exc).__name__}: {exc}); nothing of it was "
                              "applied. This is a bug in fstore: please report it with the server log")
        try:
            self.wal.append(REC_ABORT, records.encode_abort(q.lsn, f"{type(exc).__name__}: {exc}"))
            self.wal.sync()
            pending = {other.lsn: other for other in self.queue}
            self.queue.clear()
            for rt in self.runtimes.values():
                rt.table.close()
            self._recover(waiting=pending)  # replays the records queued after it, answering them
            self._publish_tables()
            for other in pending.values():
                other.done = True
                if other.result is None and other.rtype == REC_PUSH:
                    other.error = EngineError("the batch was logged but could not be replayed; see the server log")
                if other.key is not None:
                    self._inflight.pop(other.key, None)
        except Exception as e:  # noqa: BLE001
            log.exception("engine: rebuilding after an aborted record failed")
            q.error = EngineError(f"{q.error}; rebuilding the engine state also failed ({e}): restart the engine")

    def _fail_queue(self, exc: BaseException) -> None:
        for q in self.queue:
            q.error = exc
            q.done = True
            if q.key is not None:
                self._inflight.pop(q.key, None)
        self.queue.clear()
        self._applied.notify_all()

    def _tag_rows(self, rt: ViewRuntime, vb, tags: np.ndarray) -> None:
        """Records the partition of the rows `vb` went into (row_partitions)."""
        rows = rt.table.find_rows(vb.key_arg, encoded=vb.encoded)
        found = rows >= 0
        tags_of(self.row_partitions, rt)[rows[found]] = tags[vb.rows][found]

    def _hide_partitioned(self) -> None:
        """At start (group mode): the rows of Kafka partitions are hidden from
        readers until the group says whose they are (the ingest parks them)."""
        for rt in self.runtimes.values():
            tags = tags_of(self.row_partitions, rt)
            rows = np.flatnonzero(tags[:rt.table.capacity] >= 0).astype(np.int64)
            if rows.size:
                rt.table.hide_rows(rows[rt.table.rows_live(rows)])

    def _late_mask(self, stream: str, ts: np.ndarray, parts: np.ndarray) -> tuple[np.ndarray, dict]:
        """Events older than the running max event time of their partition
        (`parts`, UNTAGGED for pushes without one) minus the stream's allowed
        lateness, in arrival order (semantics.md §4); and the partitions' new
        watermarks. Per partition, so that a consumer catching up on several
        partitions at different speeds (a start, a rebalance) does not judge
        one partition's events against another's newer ones."""
        lateness = self.streams[stream].allowed_lateness
        held = self.watermarks.get(stream, {})
        late = np.zeros(ts.size, dtype=bool)
        if ts.size == 0:
            return late, {}
        first, last = int(parts[0]), int(parts[-1])
        if first == last and (parts == first).all():
            groups = [(first, slice(None))]
        else:
            groups = [(int(u), np.flatnonzero(parts == u)) for u in np.unique(parts)]
        moved = {}
        for part, idx in groups:
            t = ts[idx]
            wm = held.get(part, INT64_MIN)
            running = np.maximum.accumulate(np.concatenate([[wm], t]))[:-1]
            late[idx] = t < np.where(running == INT64_MIN, INT64_MIN, running - lateness)
            moved[part] = int(max(wm, t.max()))
        return late, moved

    def _note_evictions(self, rt: ViewRuntime) -> None:
        """A table at max_keys (or a store at max_memory) evicts keys: say so in
        the log (once per 1,000 evictions per view); /metrics counts every one."""
        n = rt.table.stats()["evicted_capacity"]
        last = self.evictions_logged.get((rt.name, rt.version), 0)
        if n - last >= 1000 or (n and not last):
            self.evictions_logged[(rt.name, rt.version)] = n
            log.warning("engine: feature view %s@v%d is at max_keys (%s) or max_memory (%s): %d key(s) evicted so "
                        "far (the oldest by event time); an evicted key reads NOT_FOUND and starts over if it "
                        "comes back", rt.name, rt.version, self.max_keys, self.max_memory, n)

    def state_bytes(self) -> dict:
        """Live bytes of each view's online state (table rows and window
        state, as `WindowView.live_bytes` counts it), by view key."""
        return {key: rt.table.stats()["rows"] * rt.table.layout.stride + sum(w.live_bytes for w in rt.windows)
                for key, rt in self.runtimes.items()}

    def _bound_memory(self) -> None:
        """max_memory: while the live state is over the bound, evict from the
        view holding the most bytes its keys with the oldest event time (an
        expired key is older than any live one, so expired keys go first),
        down to 90% of the bound so that the next pushes do not evict again."""
        for _ in range(16):
            by_view = self.state_bytes()
            total = sum(by_view.values())
            if total <= self.max_memory:
                return
            key = max(by_view, key=by_view.get)
            rt = self.runtimes[key]
            rows = rt.table.stats()["rows"]
            if rows == 0:
                return  # what is left is per-slot arrays and empty tables: nothing a key holds
            per_key = max(by_view[key] / rows, 1.0)
            k = min(rows, int((total - 0.9 * self.max_memory) / per_key) + 1)
            gone = rt.table.evict_oldest(k)
            rt.reset_rows(gone)
            self.memory_evictions += len(gone)
            self._note_evictions(rt)

    # ---- materialize

    def materialize(self, start: int, end: int, views: list[str] | None = None, *, now: int | None = None) -> dict:
        """Recomputes online values from the offline log, durably (a
        checkpoint follows). Views the engine computes from a stream rebuild
        the window state of every key with events in [start, end) from all of
        its logged events (late ones included), so healed values stay healed
        (a plain view: its latest row up to `now`, later ones held); views
        over a batch file get their values as of `end`.
        Returns {"views": {name: keys written}, "skipped": {name: why}, ...}."""
        from fsapp.offline.materialize import materialize as offline_materialize
        from fsapp.registry.errors import NotFoundError
        from fsapp.registry.resolve import _a as a_or_an

        if start >= end:
            raise BatchError(f"materialize needs start < end (got start={start}, end={end})")
        self.register_file_sources()  # a profile file may have appeared since the engine started
        with self.lock:
            now = self.clock() if now is None else now
            snap = self.registry.snapshot()
            names = list(dict.fromkeys(views)) if views is not None else sorted(self.offline.views)
            for name in names:
                entry = snap.get(name)
                if entry is not None and entry.kind != "feature_view":  # said "unknown feature view"
                    kind = entry.kind.replace("on_demand", "on-demand").replace("_", " ")
                    raise NotFoundError(f"{name} is {a_or_an(kind)}, not a feature view: materialize takes "
                                        f"feature views ({', '.join(sorted(self.offline.views))})")
                self.offline.view(name)  # unknown names fail before anything is written
            latest = {n: rt for (n, v), rt in self.runtimes.items()
                      if snap.get(n) is not None and snap.get(n).version == v}
            missing = [n for n in names if n not in latest]
            if missing:
                raise NotFoundError(f"feature view(s) {', '.join(missing)} have no online table in this engine "
                                    "(only views over streams are served online)")
            written, skipped = {}, {}
            self.offline.log.flush()
            plain = []
            for name in names:
                rt = latest[name]
                if rt.stream is not None and rt.stream.name in self.partitioned:
                    skipped[name] = self.partitioned[rt.stream.name]
                    continue
                if rt.stream is not None:
                    try:
                        written[name] = self._rebuild_from_log(rt, start, end, now)
                    except duckdb.Error as e:  # the offline log cannot be read: say so, go on with the others
                        skipped[name] = f"its offline event log cannot be read: {str(e).strip().splitlines()[0]}"
                else:
                    plain.append(name)
            if plain:
                report = offline_materialize(self.offline, plain, start, end,
                                             {n: latest[n].table for n in plain}, now=now)
                skipped.update(getattr(report, "skipped", {}) or {})
                written.update({n: c for n, c in dict(report).items()})
        self.checkpoint()  # the rewritten state is not in the WAL: make it durable before answering
        return {"views": written, "skipped": skipped, "start": start, "end": end}

    def _rebuild_from_log(self, rt: ViewRuntime, start: int, end: int, now: int) -> int:
        """The keys with logged events in [start, end) from all their logged
        events: a windowed view's state rebuilt; a plain view's latest row up
        to `now` written (the latest event time wins over the row it has), the
        rows after it held, as live. Returns the keys (windowed) or rows
        (plain) written."""
        vb = self._logged_batch(rt, start, end)
        return 0 if vb is None else rt.rebuild(vb, now) if rt.aggregated else rt.apply(vb, now)

    def _logged_batch(self, rt: ViewRuntime, start: int, end: int) -> ViewBatch | None:
        """Every logged event of the keys of `rt` with events in [start, end),
        in (ts, seq) order, prepared for `rt` (None: no such event)."""
        stream = rt.stream.name
        if not self.offline.log.files(stream):
            return None
        cur = self.cursor()
        s = rt.stream
        cols = ", ".join(_qi(c.name) for c in s.columns)
        keys = ", ".join(_qi(k) for k in rt.key_names)
        ev = self.offline.source(stream).relation
        touched = (f"SELECT DISTINCT {keys} FROM {ev} WHERE _fs_event_ts >= {int(start)} "
                   f"AND _fs_event_ts < {int(end)}")
        if self.max_keys is not None:
            # under a bound, the keys with the newest events, as evictions would keep (the table takes at
            # most about half its capacity of new keys in one batch; more raised SchemaError)
            touched = (f"SELECT {keys} FROM {ev} WHERE _fs_event_ts >= {int(start)} AND _fs_event_ts < {int(end)} "
                       f"GROUP BY ALL ORDER BY max(_fs_event_ts) DESC LIMIT {max(1, self.max_keys // 2)}")
        # a key the view's table cannot hold (text over its size: a view applied since, keyed by a
        # column whose values were never keys) leaves its events out, not the whole view
        fits = " AND ".join(f"({_qi(f.name)} IS NULL OR strlen({_qi(f.name)}) <= {f.size})"
                            for f in rt.schema.keys if f.kind == "string") or "true"
        sql = (f"SELECT {cols}, ({fits}) AS __fits FROM {ev} e SEMI JOIN ({touched}) k USING ({keys}) "
               f"ORDER BY _fs_event_ts, _fs_seq")
        events = cur.sql(sql).to_arrow_table()
        ok = events.column("__fits")
        skipped = events.num_rows - pc.sum(ok).as_py() if events.num_rows else 0
        if skipped:
            log.warning("feature view %s@v%d: %d logged event(s) have a key longer than its table holds; they are "
                        "left out of it", rt.name, rt.version, skipped)
            events = events.filter(ok)
        events = events.drop_columns(["__fits"])
        if events.num_rows == 0:
            return None
        batch = events.append_column(ROW, pa.array(np.arange(events.num_rows, dtype=np.int64)))
        if rt.bare is None:
            cur.register("__batch", batch)
        try:
            return rt.prepare(cur, batch)
        finally:
            if rt.bare is None:
                cur.unregister("__batch")

    # ---- offline

    def register_file_sources(self) -> None:
        """Registers the registry's Parquet/CSV sources with the offline store
        (again: a file may appear after the engine started). A file that does
        not exist yet is skipped and reads as empty."""
        from fsapp.errors import SourceError

        for entry in self.registry.list("source"):
            d = entry.definition
            path = d.path if os.path.isabs(d.path) else os.path.join(self.repo_root, d.path)
            try:
                self.offline.register_source(d.name, path, timestamp=d.timestamp,
                                             created_timestamp=d.created_timestamp, format=d.format)
            except SourceError:
                continue

    def _offline_view(self, name: str, version: int):
        """A registered version of a view as training sets read it: a feature
        service may pin an older version than the latest, and its training set
        is built from that one, over the stream as it is now (as the engine
        serves it online)."""
        info = self.registry.feature_view(name, version)
        entities = [self.registry.get(e).definition for e in info.definition.entities]
        source = info.definition.source
        src = self.streams.get(source) or self.registry.get(source).definition
        return from_registry(info.definition, src, entities, info.features)

    def get_historical_features(self, entity_df, features, **kw):
        """Point-in-time training set from the offline log (see fsapp.offline)."""
        from fsapp.ondemand.offline import split

        self.register_file_sources()
        with self.lock:
            self.offline.log.flush()
        stored, on_demand = split(self.registry, [features] if isinstance(features, str) else features)
        return self.offline.get_historical_features(entity_df, stored, on_demand=on_demand, **kw)

    # ---- time

    def tick(self, now: int | None = None) -> int:
        """Time-driven updates: window values at hop boundaries and when
        events ahead of the clock become visible; expired plain rows.
        Returns the rows rewritten. The keys a boundary moves are found a
        slot range at a time and rewritten a chunk of rows at a time, each
        sized by the view's last one's pace to hold the lock about
        TICK_HOLD_S (TICK_SCAN slots and TICK_CHUNK rows before its first),
        the lock released in between: a day boundary that moves a million
        keys does not stop pushes and reads (a row pushed meanwhile gets its
        values as of that push, or later)."""
        with self.lock:
            now = self.clock() if now is None else now
            views = list(self.runtimes.items())
        total = 0
        for key, rt in views:
            with self.lock:
                if self.runtimes.get(key) is not rt:
                    continue
                released, scan = rt.tick_start(now)
            total += self._write_ticked(key, rt, released, now)
            # the keys a boundary moved are found a slot range at a time and
            # written a chunk of rows at a time: no lock hold grows with the keys
            # (nor with their cells: a range of keys with 100 events each took
            # 4.5-9.7 ms to scan at the 8,192 slots a range was before)
            # (a scan of every live row, the first boundary after a start, paces apart;
            # a boundary's pace differs from the last one's by up to ~2x: half the step first)
            pace_key = (key, bool(scan.windows)) if scan is not None else None
            lo, step = 0, max(self._tick_scan.get(pace_key, 2 * TICK_SCAN) // 2, TICK_SCAN_MIN)
            while scan is not None and lo < scan.slots:
                time.sleep(0)  # as below: a waiting push or read takes the lock between scans
                with self.lock:
                    if self.runtimes.get(key) is not rt:
                        break  # the registry changed: the new runtime computed its own values
                    t = time.perf_counter()
                    hi = min(lo + step, scan.slots)
                    rows = rt.tick_scan(scan, lo, hi)
                    took = time.perf_counter() - t
                if hi - lo == step:  # not the short last part; and at most doubled: slots past the last
                    # key, or a run of idle ones, scan fast
                    step = _paced(hi - lo, took, TICK_SCAN_MIN, min(2 * step, TICK_SCAN_MAX))
                    self._tick_scan[pace_key] = step
                lo = hi
                if released.size and rows.size:
                    rows = rows[~np.isin(rows, released)]  # written already
                total += self._write_ticked(key, rt, rows, now)
        return total

    def _write_ticked(self, key, rt, rows: np.ndarray, now: int) -> int:
        """Rewrites these rows' values as of `now`, a chunk per lock hold:
        as many rows as the view's last chunk's pace fits in TICK_HOLD_S
        (TICK_CHUNK before its first; a row costs with its cells: 512 rows of
        keys with 100 events each held the lock ~9 ms). The size carries over
        to the view's next call (the next slot range of a scan, the next
        tick): it started over at TICK_CHUNK at each, so every slot range's
        first hold of heavy keys took that ~9 ms."""
        written, i = 0, 0
        size = self._tick_chunk.get(key, TICK_CHUNK)
        while i < rows.size:
            time.sleep(0)  # the lock is not fair: let a waiting push or read take it first
            with self.lock:
                if self.runtimes.get(key) is not rt:
                    break  # the registry changed: the new runtime computed its own values
                t = time.perf_counter()
                chunk = rows[i:i + size]
                done = chunk.size
                chunk = chunk[rt.table.rows_live(chunk)]  # a key deleted meanwhile stays deleted
                rt.write_values(chunk, max(now, rt.latest_now))
                took = time.perf_counter() - t
            written += int(chunk.size)
            i += size
            # a short last chunk's pace is mostly its fixed cost: it teaches only when it held too long
            if done == size or took > TICK_HOLD_S:
                size = _paced(done, took, TICK_CHUNK_MIN, TICK_CHUNK_MAX)
                self._tick_chunk[key] = size
        return written

    def next_change(self, now: int | None = None) -> int | None:
        """When `tick` next has work (µs), for a ticker that sleeps until then."""
        with self.lock:
            now = self.clock() if now is None else now
            times = [t for t in (rt.next_change(now) for rt in self.runtimes.values()) if t is not None]
            return min(times) if times else None

    # ---- reads

    def table_of(self, info) -> Table:
        try:
            return self.runtimes[(info.name, info.version)].table
        except KeyError:
            from fsapp.registry.errors import NotFoundError
            raise NotFoundError(f"feature view {info.name} v{info.version} is not served online "
                                f"(it reads a batch source, or was not applied)") from None

    def get_online_features(self, features=None, feature_service=None, entities=None, *, now: int | None = None,
                            as_of: int | None = None, full_feature_names: bool = False) -> dict:
        """Online values. By default the stored values (as of the engine's last
        update) with TTL judged at `now`; with `as_of`, the values as of that
        time recomputed from the retained state (see `_read_as_of`)."""
        return self._online(online_response, features, feature_service, entities, now, as_of, full_feature_names)

    def get_online_json(self, features=None, feature_service=None, entities=None, *, now: int | None = None,
                        as_of: int | None = None, full_feature_names: bool = False) -> bytes:
        """`get_online_features` as its JSON text (what the API sends)."""
        return self._online(online_json, features, feature_service, entities, now, as_of, full_feature_names)

    def _online(self, build, features, feature_service, entities, now, as_of, full_feature_names):
        resolved = self.registry.resolve_features(features, feature_service)
        with self.lock:
            if as_of is not None:
                return build(resolved, self.table_of, entities, as_of, full_feature_names, lookup=self._read_as_of)
            return build(resolved, self.table_of, entities, self.clock() if now is None else now,
                         full_feature_names)

    def _read_as_of(self, info, table: Table, keys, t: int):
        """Values as of `t` (events with ts < t for windows; the latest row with
        ts <= t for plain views). Online state keeps only a horizon: a key
        whose value as of `t` is no longer derivable raises AsOfOutsideHorizon
        rather than answering with another time's value."""
        rt = self.runtimes[(info.name, info.version)]
        if rt.aggregated:
            values, nulls, status, event_ts = rt.read_as_of(keys, t)
            r = table.get_batch(keys, t)  # the result shape; its arrays are replaced
            r.values, r.nulls, r.status, r.event_ts = values, nulls, status, event_ts
            return r
        if any(int(vb.ts.min()) <= t for vb, _ in rt.plain_held):
            # a row ahead of the clock the view holds may be the answer as of t (any key: conservative)
            raise AsOfOutsideHorizon(f"feature view {info.name}: as_of is ahead of the engine clock, past rows it "
                                     "has not written yet; ask again once the clock has passed that time")
        r = table.get_batch(keys, t)
        newer = (r.status == PRESENT) & (r.event_ts > t)
        if newer.any():
            raise AsOfOutsideHorizon(
                f"feature view {info.name}: the online store keeps only the latest row per key, which is newer "
                f"than as_of for {int(newer.sum())} key(s); ask /api/v1/features/historical for that time")
        stats = table.stats()
        gone = r.status != PRESENT
        if gone.any() and (stats["evicted_expired"] or stats["evicted_capacity"]) and t < self.clock():
            # a row dropped since (TTL expiry, max_keys) may have been the answer as of t
            raise AsOfOutsideHorizon(
                f"feature view {info.name}: rows the online store has dropped since (TTL or max_keys) may have "
                f"been the value as of that time for {int(gone.sum())} key(s); ask /api/v1/features/historical")
        return r

    # ---- checkpoints and lifecycle

    def _checkpoint_copies(self, available: int | None = None) -> bool:
        """Whether this checkpoint copies the window state in this process
        (else a forked child encodes it). checkpoint_mode "auto": copies while
        they (the cells, per-key arrays and HLL blocks, and room for the keys
        written meanwhile: 1.25x) take at most COPY_CHECKPOINT_MAX_BYTES and
        half the memory still available. Measured with a 5-row pusher beside
        checkpoints at 100k Zipf keys (96 MB of window state): push p99
        6.6-7.4 ms copying against 11.7-37 ms forking (3.0-3.4 without a
        checkpoint), slowest push 10-11 against 46-52 ms: a fork holds the
        lock 8-38 ms under load (the page tables of the process's private
        memory) and the first push after it takes ~900 copy-on-write faults
        (Python's reference counts write every object it touches). At 1M keys
        (0.8 GB) the p99s meet (5.7-8.4 forking, 7.3-7.7 copying) while the
        copy doubles the window state for the checkpoint's length and takes
        twice as long (8.9 against 4.2 s: its fresh pages' first touch), and
        a fork copies only the pages written meanwhile: so a fork past 256 MB
        (~250k keys of the starter repo)."""
        if self.checkpoint_mode != "auto":
            return self.checkpoint_mode == "copy"
        need = 1.25 * sum(w.nbytes for rt in self.runtimes.values() for w in rt.windows)
        return need <= min(COPY_CHECKPOINT_MAX_BYTES, (available_bytes() if available is None else available) / 2)

    def checkpoint(self) -> int:
        """Writes a checkpoint; returns its LSN. A failure (a full disk) raises
        and is remembered (`checkpoint_error`, `checkpoint_failures`, /ready):
        nothing is lost — the WAL keeps everything since the last good one —
        and the next checkpoint tries again."""
        with self._checkpoint_lock:
            try:
                lsn = self._checkpoint()
            except (OSError, CheckpointError) as e:  # WalError and CheckpointError are OSErrors
                self.checkpoint_failures += 1
                self.checkpoint_error = f"{type(e).__name__}: {e}"
                raise
            self.checkpoint_error = None
            return lsn

    def _checkpoint(self) -> int:
        # Under the lock only what a consistent state at `lsn` needs: the
        # tables' copies made consistent (shared memory, which a fork would
        # not freeze; Table.snapshot_end) and either a fork (its child
        # encodes the window state it sees) or copies of the window cells
        # (WindowView.frozen_end). Encoding, the offline log's Parquet and fsyncs
        # happen after (benches/bench_state.py). In copy mode the cells are
        # copied before the lock too, and under it only the keys written
        # meanwhile (WindowView.track_writes / frozen_begin / frozen_end).
        task = None
        # the tables are copied before the lock (no GIL either) and made
        # consistent under it: only the rows written meanwhile, which each
        # table logs from here on, are copied again (at 100k keys the whole
        # copies held the lock ~10 ms; finding those rows by reading every
        # row's seqlock count, ~4 ms)
        available = available_bytes() if self.checkpoint_mode == "auto" else None  # (a file read: not under the lock)
        with self.lock:
            copy = self._checkpoint_copies(available)
            self.last_checkpoint_mode = "copy" if copy else "fork"
            tables = [(f"{name}@v{version}/table", rt.table) for (name, version), rt in self.runtimes.items()]
            for _, t in tables:
                t.track_writes()
            # copy mode: the window cells likewise (WindowView.track_writes)
            windows = [(w, w.track_writes()) for rt in self.runtimes.values() for w in rt.windows] if copy else []
        fuzzy = {}
        for key, t in tables:
            try:  # into the last checkpoint's copy: no page faults
                fuzzy[key] = (t, t.snapshot_begin(out=self._table_copies.get(key)))
            except ValueError:  # closed meanwhile (a registry change): copied whole under the lock
                pass
        # (a view replaced meanwhile by a registry change is frozen whole under
        # the lock; `windows` keeps these alive, so their ids stay theirs)
        begun = {id(w): w.frozen_begin(track) for w, track in windows}
        with self.lock:
            lsn, work = self.applied_lsn, self.work_s
            parts, runtimes = {}, []
            for (name, version), rt in self.runtimes.items():
                key = f"{name}@v{version}/table"
                t, token = fuzzy.get(key, (None, None))
                parts[key] = self._table_copies[key] = (
                    rt.table.snapshot_end(token) if t is rt.table else rt.table.snapshot(out=self._table_copies.get(key)))
                for i, w in enumerate(rt.windows):
                    b = begun.get(id(w))
                    parts[f"{name}@v{version}/window{i}"] = (
                        w if not copy else w.frozen_end(b) if b is not None else w.frozen())
                if self.row_partitions is not None and (name, version) in self.row_partitions:
                    parts[f"{name}@v{version}/partitions"] = self.row_partitions[(name, version)].copy()
                runtimes.append({"name": name, "version": version, "windows": len(rt.windows),
                                 **rt.checkpoint_meta()})
            meta = {"stream_watermarks": {k: {str(p): w for p, w in v.items()} for k, v in self.watermarks.items()},
                    "offsets": dict(self.offsets),
                    "logged_offsets": dict(self.logged_offsets), "runtimes": runtimes,
                    "idempotency": self.idempotency.to_list(), "late_events": self.late_total,
                    "row_partitions": self.row_partitions is not None and self.partitions_trusted,
                    "backfill_pending": sorted([n, v] for n, v in self._backfill_pending)}
            tmp = temp_path(self.ckpt_dir, lsn)
            if not copy:
                # niced: on a busy machine the encoding waits, not the pushes and reads
                task = fork_task(lambda: write_temp(tmp, lsn, _encode_parts(parts), meta), nice=10)
                parts = None  # the child has its own (copy-on-write) view of them
        try:
            # The checkpoint lets the WAL up to `lsn` go: its events must be in
            # Parquet before it is in place. This flush writes those and perhaps
            # later ones, which replay then does not log again (it logs seqs >=
            # the log's next).
            self.offline.log.flush()
            self.wal.sync()
            if task is None:
                write_temp(tmp, lsn, _encode_parts(parts), meta)
                parts = None
            else:
                t, task = task, None
                try:
                    t.wait()
                except ForkedTaskError as e:
                    raise CheckpointError(f"writing checkpoint {lsn} in a forked child failed: {e}") from None
            commit(tmp, keep=self.keep)
        except BaseException:
            if task is not None:
                try:
                    task.wait()
                except ForkedTaskError:
                    pass
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        oldest = oldest_retained_lsn(self.ckpt_dir)
        if oldest is not None:
            self.wal.truncate_before(oldest)
        self.checkpoint_lsn, self._ckpt_work_s = lsn, work
        return lsn

    def compact(self, min_waste: float = COMPACT_WASTE, min_bytes: int = COMPACT_MIN_BYTES) -> int:
        """Lays out again, keys' cells back to back, each window whose pool
        holds more than `min_waste` of its cells free (and at least
        `min_bytes` of them): the runs keys grew through stay behind as free
        blocks that no key may need again (a third of the pool after a load
        of 100 events a key; architecture.md, "Streaming windows"). One
        window at a time, as a copy-mode checkpoint copies one
        (WindowView.track_writes / compact_begin / compact_end): the cells
        are copied without the lock, and under it only the keys written
        meanwhile; the window's old and new pools are both held until then.
        Then the allocators' free memory goes back to the OS (heap.
        release_free_memory: ~0.1 GB at 1M keys after a load). `fstore
        serve`'s engine calls it after each checkpoint. Returns the window
        state's bytes given back."""
        freed = 0
        with self._checkpoint_lock:  # one tracker at a time: a copy-mode checkpoint tracks writes too
            with self.lock:
                windows = [w for rt in self.runtimes.values() for w in rt.windows]
            for w in windows:
                with self.lock:
                    waste = w.pool_waste * w.width * 8
                    if w.pool_waste <= min_waste * w.pool_top or waste < min_bytes:
                        continue
                    before = w.nbytes
                    track = w.track_writes()
                try:
                    begun = w.compact_begin(track)
                except MemoryError:
                    begun = None
                with self.lock:
                    try:
                        if begun is not None and w.compact_end(begun):
                            freed += before - w.nbytes
                            self.compactions += 1
                    except MemoryError:  # room for keys that grew meanwhile: the view stays as it was
                        begun = None
                    if begun is None:
                        w._stop_tracking()
            self.compacted_bytes += freed
        self.heap_released_bytes += release_free_memory()  # (no lock: the allocators lock themselves)
        return freed

    def grow_tables(self, free_share: float = GROW_AHEAD_FREE, stop: threading.Event | None = None) -> int:
        """Grows, ahead of need, each online table with less than `free_share`
        of its rows free and room below its max_capacity, as a push that
        finds it full would (layout.next_capacity), but with the rows copied
        and indexed without the engine lock (Table.grow_begin / grow_copy /
        grow_end, one table at a time, as `compact` and a copy-mode
        checkpoint track writes): under the lock only the new buffer is
        made, and at the end the rows written meanwhile are copied again and
        the table moves; then the views' per-key window state their keys
        nearly fill, a window a lock hold (ViewRuntime.state_to_grow). A push
        that finds a table full still grows it itself and waits for the whole
        copy (~0.4 s at 1M rows, file-backed). A push that leaves something
        nearly full runs it in a thread of the engine's own
        (_grow_ahead_if_needed; Engine(grow_ahead=False): never). `stop`
        (stop_growth, before a final checkpoint and close): a growth under
        way gives up within a chunk of its copy (Table.grow_copy) and no
        other starts, so a SIGTERM's final checkpoint does not wait for a
        copy. Returns the tables grown."""
        grown = 0
        stopped = stop.is_set if stop is not None else (lambda: False)
        with self._checkpoint_lock:  # one tracker at a time
            with self.lock:
                keys = list(self.runtimes)
            for key in keys:
                with self.lock:
                    # looked up again under the lock, each time: a rebuild (_abort's
                    # _recover) closes every table and makes new runtimes meanwhile
                    rt = self.runtimes.get(key)
                    if rt is None or stopped() or self._closed() or not rt.table_to_grow(free_share):
                        continue
                    t = rt.table
                    token = t.grow_begin(next_capacity(t.capacity, t.max_capacity))
                if token is None:
                    continue
                try:
                    t.grow_copy(token, stop)
                finally:
                    with self.lock:  # a table closed meanwhile has no buffer: grow_end gives up
                        grown += bool(t.grow_end(token))
                    t.release_retired()  # the old buffer's pages freed outside the lock
            with self.lock:
                keys = list(self.runtimes)
            for key in keys:
                with self.lock:
                    rt = self.runtimes.get(key)
                    parts = [] if rt is None or stopped() or self._closed() else rt.state_to_grow()
                for part in parts:
                    with self.lock:
                        if stopped() or self._closed() or self.runtimes.get(key) is not rt:
                            break
                        part()
                    time.sleep(0)  # the lock is not fair: let a waiting push or read take it first
        self.tables_grown_ahead += grown
        return grown

    def _grow_ahead_if_needed(self) -> None:
        """After a push: when a table has less than GROW_AHEAD_FREE of its
        rows free (below its max_capacity), or its keys nearly fill a
        window's per-key state, and no growth is under way, grow_tables runs
        in a thread of the engine's own, so the push that would find it full
        does not wait for the whole copy (~0.45 s at 1M rows; bench_state's
        growth rows). A check of a few integers a view when nothing is due."""
        if not self.grow_ahead or self._grow_stop.is_set() or time.monotonic() < self._grow_retry_at:
            return
        th = self._grower
        if th is not None and th.is_alive():
            return
        # under the engine lock (a reload closes tables), but never waiting for it: a
        # push that finds it taken leaves the check to the next one
        if not self.lock.acquire(blocking=False):
            return
        try:
            due = not self._closed() and any(rt.needs_growth_ahead(GROW_AHEAD_FREE) for rt in self.runtimes.values())
        finally:
            self.lock.release()
        if not due:
            return
        with self._grower_lock:
            if self._grow_stop.is_set() or (self._grower is not None and self._grower.is_alive()):
                return
            self._grower = threading.Thread(target=self._grow_in_background, name="fstore-grow-ahead", daemon=True)
            self._grower.start()

    def _grow_in_background(self) -> None:
        try:
            self.grow_tables(stop=self._grow_stop)
        except Exception as e:  # noqa: BLE001 - no memory or disk for the new buffer: a push grows it itself
            self._grow_retry_at = time.monotonic() + GROW_AHEAD_RETRY_S
            log.error("engine: growing an online table ahead of need failed (%s: %s); again in %.0f s at the "
                      "earliest", type(e).__name__, e, GROW_AHEAD_RETRY_S)

    def wait_growth(self) -> None:
        """Waits for a growth ahead of need under way (a bench measuring the
        state, a test) to finish."""
        th = self._grower
        if th is not None and th is not threading.current_thread():
            th.join()

    def stop_growth(self) -> None:
        """Ends growth ahead of need: a growth under way gives up within a
        chunk of its copy (Table.grow_copy), and no other starts. Before a
        final checkpoint (a growth holds the checkpoint lock) and close."""
        with self._grower_lock:  # (no growth starts once it is set)
            self._grow_stop.set()
        self.wait_growth()

    def _closed(self) -> bool:
        return self.wal is None or self.wal.closed

    @property
    def replay_backlog_s(self) -> float:
        """Seconds of work a restart would replay now: preparing and applying
        the records logged since the last checkpoint, as they took live (a
        replay costs that or less: it prepares consecutive records together;
        benches/bench_state.py). The engine
        server checkpoints early when it passes a budget (engine_server.
        CheckpointSchedule), so a restart stays short however busy ingestion is."""
        return self.work_s - self._ckpt_work_s

    def stats(self) -> dict:
        out = {"applied_lsn": self.applied_lsn, "checkpoint_lsn": self.checkpoint_lsn,
               "replay_backlog_s": round(self.replay_backlog_s, 3), "late_events": self.late_total,
               "offsets": dict(self.offsets), "quarantined": self.quarantined,
               "checkpoint_failures": self.checkpoint_failures, "checkpoint_error": self.checkpoint_error,
               "checkpoint_mode": self.last_checkpoint_mode,
               "compactions": self.compactions, "compacted_bytes": self.compacted_bytes,
               "heap_released_bytes": self.heap_released_bytes,
               "tables_grown_ahead": self.tables_grown_ahead,
               "window_dropped": sum(rt.window_dropped for rt in self.runtimes.values()),
               "state_bytes": sum(self.state_bytes().values()), "max_memory": self.max_memory,
               "memory_evictions": self.memory_evictions,
               "views": {f"{n}@v{v}": rt.table.stats() for (n, v), rt in self.runtimes.items()}}
        for name, source in self.sources.items():
            out[name] = source.stats()
        return out

    def close(self) -> None:
        self.stop_growth()
        with self.lock:
            try:
                self.offline.log.flush()
                self.offline.close()
            except OSError as e:  # a full disk: the WAL still holds these events; replay logs them again
                log.error("engine: flushing the offline log on close failed (%s); the WAL keeps its events", e)
            if self.wal is not None:
                self.wal.close()
            for rt in self.runtimes.values():
                rt.table.close()
            for cur in self._cursors:
                try:
                    cur.close()
                except duckdb.Error:
                    pass
            self.con.close()
            self.registry.close()


def _encode_parts(parts: dict) -> dict:
    """Checkpoint blobs: table copies as they are, window state streamed
    (`WindowView.snapshot()`: encoded a slot range at a time as the file is
    written; a view's whole encoding held at once OOM-killed a 10M-key
    checkpoint, benches/bench_state.py --keys)."""
    return {k: (v if isinstance(v, np.ndarray) else v.snapshot()) for k, v in parts.items()}


def _remove_stale_table_files(online_dir: str) -> None:
    """Tables a dead engine wrote under a temporary name and never renamed
    into place (killed during recovery or growth): a crash loop must not fill
    the disk with them. Only a dead process's: a live one may be writing."""
    from fscore.proc import pid_alive

    if not os.path.isdir(online_dir):
        return
    for name in os.listdir(online_dir):
        if ".fst.tmp." in name:
            pid = name.split(".fst.tmp.", 1)[1].split(".")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                try:
                    os.unlink(os.path.join(online_dir, name))
                except FileNotFoundError:
                    pass


def _check_key(key) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BatchError(f"an idempotency key is 1..{MAX_KEY_LENGTH} printable characters, e.g. a UUID")
    return key


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'

