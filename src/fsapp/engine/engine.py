"""The engine: the single writer.

push(stream, rows) → normalise to the stream's types (DuckDB casts) → log the
batch in the WAL (durable under the fsync policy) → mark late events (beyond
the stream's allowed lateness, against the stream's running max event time)
→ for each feature view of the stream: DuckDB projection + filter → online
table (plain) or windows → online table (aggregated).

Recovery = the last checkpoint (tables, window states, watermarks, source
offsets) + replay of the logged batches after it, with the `now` each batch
was applied at, so replay reproduces the same state. Checkpoints copy the
tables (readers are never blocked) and let the WAL drop older segments.
"""
from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from fscore.checkpoint import load_latest_checkpoint, oldest_retained_lsn, write_checkpoint
from fscore.table import Table
from fscore.wal import Wal, read_log
from fscore.window import WindowView

from fsapp.engine.errors import AsOfOutsideHorizon, BatchError, UnknownStreamError
from fsapp.engine.runtime import column_for_table
from fscore.table import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT
from fsapp.engine.ingest import BatchNormaliser
from fsapp.engine.online import online_json, online_response
from fsapp.engine.runtime import ViewRuntime, table_file
from fsapp.offline.store import OfflineStore
from fsapp.offline.views import from_registry
from fsapp.registry.catalog import Registry

REC_PUSH = 1
# Source offsets consumed without producing rows (dead-lettered messages):
# logged so that recovery does not read them again. Payload: JSON {"offsets"}.
REC_OFFSETS = 2
INT64_MIN = np.iinfo(np.int64).min


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class PushResult:
    accepted: int
    late: int
    lsn: int

    def to_dict(self) -> dict:
        return {"accepted": self.accepted, "late": self.late, "lsn": self.lsn}


def _encode_push(stream: str, now: int, seq: int, table: pa.Table, offsets: dict | None) -> bytes:
    head = json.dumps({"stream": stream, "now": now, "seq": seq, "offsets": offsets or {}}).encode()
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return struct.pack("<I", len(head)) + head + sink.getvalue()


def _decode_push(payload) -> tuple[dict, pa.Table]:
    mv = memoryview(payload)
    (n,) = struct.unpack_from("<I", mv, 0)
    head = json.loads(bytes(mv[4:4 + n]))
    return head, pa.ipc.open_stream(pa.py_buffer(mv[4 + n:])).read_all()


class Engine:
    """The single writer of the online tables. Thread-safe: one lock orders
    pushes, ticks and checkpoints (the WAL's order is the apply order)."""

    def __init__(self, data_dir: str, registry_path: str, *, fsync: str = "always", capacity: int = 100_000,
                 clock=now_us, keep_checkpoints: int = 2, repo_root: str | None = None):
        self.data_dir = os.path.abspath(data_dir)
        # batch file sources' relative paths are relative to the repo root
        self.repo_root = os.path.abspath(repo_root) if repo_root else os.getcwd()
        os.makedirs(self.data_dir, exist_ok=True)
        self.registry = Registry(registry_path)
        self.capacity = capacity
        self.clock = clock
        self.keep = keep_checkpoints
        self.lock = threading.RLock()
        # one checkpoint at a time (the run loop and a Kafka revoke may both ask)
        self._checkpoint_lock = threading.Lock()
        self.con = duckdb.connect()
        self.watermarks: dict[str, int] = {}
        self.offsets: dict = {}
        self.late_total = 0
        self.runtimes: dict[tuple[str, int], ViewRuntime] = {}
        # ingest sources running against this engine (e.g. "kafka"): each has
        # .stats() -> dict, reported by stats() and /metrics
        self.sources: dict = {}
        self.streams: dict = {}
        self.normalisers: dict[str, BatchNormaliser] = {}
        # every accepted event, late ones included, goes to the offline log
        self.offline = OfflineStore(os.path.join(self.data_dir, "offline"))
        self.ckpt_dir = os.path.join(self.data_dir, "checkpoints")
        self.wal_dir = os.path.join(self.data_dir, "wal")
        ckpt = load_latest_checkpoint(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else None
        self._load_definitions(ckpt)
        self.register_file_sources()
        self.checkpoint_lsn = ckpt.lsn if ckpt else 0
        self.replayed = 0
        for lsn, rtype, payload in read_log(self.wal_dir, after_lsn=self.checkpoint_lsn) \
                if os.path.isdir(self.wal_dir) else ():
            if rtype == REC_PUSH:
                head, table = _decode_push(payload)
                if head["stream"] in self.streams:
                    self._apply(head["stream"], table, head["now"], head["offsets"])
                    if head["seq"] >= self.offline.log.next_seq(head["stream"]):
                        # not yet in a flushed Parquet file: log it again, same numbers
                        self._log_offline(head["stream"], table, head["now"], head["seq"])
                self.replayed += 1
            elif rtype == REC_OFFSETS:
                self.offsets.update(json.loads(bytes(payload))["offsets"])
                self.replayed += 1
        self.wal = Wal(self.wal_dir, fsync=fsync, start_lsn=self.checkpoint_lsn + 1)
        self._publish_tables()  # readers switch to the recovered tables only now
        self.applied_lsn = self.wal.last_lsn

    # ---- definitions

    def _load_definitions(self, ckpt) -> None:
        snap = self.registry.snapshot()
        self.streams = {e.name: e.definition for e in snap.of_kind("stream")}
        wanted = {(e.name, e.version) for e in snap.of_kind("feature_view")}
        for svc in snap.of_kind("feature_service"):  # services pin view versions
            for ref in svc.resolved["features"]:
                view, _, rest = ref.partition("@v")
                wanted.add((view, int(rest.split(":")[0])) if rest else (view, snap.get(view).version))
        saved = {(r["name"], r["version"]): r for r in (ckpt.meta.get("runtimes", []) if ckpt else [])}
        if ckpt:
            self.watermarks = {k: int(v) for k, v in ckpt.meta.get("watermarks", {}).items()}
            self.offsets = ckpt.meta.get("offsets", {})
        for name, version in sorted(wanted):
            if (name, version) in self.runtimes:
                continue
            info = self.registry.feature_view(name, version)
            source = info.definition.source
            if source not in self.streams and info.definition.is_aggregated:
                continue  # windows over a batch file source are computed offline only
            table = windows = None
            if (name, version) in saved:
                key = f"{name}@v{version}"
                table = Table.from_snapshot(ckpt.blobs[f"{key}/table"], path=table_file(self.data_dir, name, version),
                                            publish=False)
                windows = [WindowView.from_bytes(ckpt.blobs[f"{key}/window{i}"])
                           for i in range(saved[(name, version)]["windows"])]
            # a plain view over a file source gets an online table that materialize fills
            self.runtimes[(name, version)] = ViewRuntime(info, self.streams.get(source), self.data_dir,
                                                         self.capacity, table=table, windows=windows)
            if snap.get(name) is not None and snap.get(name).version == version:  # offline: latest versions
                entities = [self.registry.get(e).definition for e in info.definition.entities]
                src = self.streams.get(source) or self.registry.get(source).definition
                self.offline.add_view(from_registry(info.definition, src, entities))
        self.normalisers = {name: BatchNormaliser(s, self.con) for name, s in self.streams.items()}
        for name, s in self.streams.items():
            self.offline.declare_stream(name, [(c.name, c.type) for c in s.columns])

    def _publish_tables(self) -> None:
        for rt in self.runtimes.values():
            rt.table.publish()

    def reload(self) -> None:
        """Starts runtimes for definitions applied since (new views start empty;
        materialize backfills them from the offline log)."""
        with self.lock:
            self._load_definitions(None)
            self._publish_tables()
        self.register_file_sources()

    # ---- writes

    def push(self, stream: str, rows, *, now: int | None = None, offsets: dict | None = None) -> PushResult:
        """Logs, then applies a batch; returns once it is durable."""
        if stream not in self.streams:
            raise UnknownStreamError(f"no stream {stream!r}; streams are: {', '.join(sorted(self.streams)) or 'none'}")
        table, _ = self.normalisers[stream].normalise(rows)
        with self.lock:
            now = self.clock() if now is None else now
            if table.num_rows == 0:
                return PushResult(0, 0, self.applied_lsn)
            late, _ = self._late_mask(stream, table)
            # PERF: each view's DuckDB projection runs once per push, for the
            # key checks and then the apply (a query costs milliseconds)
            projected = self._project(stream, table.filter(pa.array(~late)) if late.any() else table)
            self._check_projected(projected)  # refuse before logging: nothing is half-applied
            seq = self.offline.log.next_seq(stream)
            lsn = self.wal.append(REC_PUSH, _encode_push(stream, now, seq, table, offsets))
            late = self._apply(stream, table, now, offsets, projected)
            self._log_offline(stream, table, now, seq)
            self.applied_lsn = lsn
            return PushResult(table.num_rows - late, late, lsn)

    def validate(self, stream: str, rows) -> None:
        """Raises what push would raise for these rows' content (BatchError,
        KeyEncodingError), without logging or applying anything. Lets a
        source find the bad rows of a refused batch."""
        if stream not in self.streams:
            raise UnknownStreamError(f"no stream {stream!r}; streams are: {', '.join(sorted(self.streams)) or 'none'}")
        table, _ = self.normalisers[stream].normalise(rows)
        if table.num_rows:
            with self.lock:
                self._check_keys(stream, table)

    def advance_offsets(self, offsets: dict) -> int:
        """Records source offsets consumed without rows (e.g. dead-lettered
        messages) durably, so a restart does not consume them again. Returns
        the record's LSN."""
        if not offsets:
            return self.applied_lsn
        with self.lock:
            lsn = self.wal.append(REC_OFFSETS, json.dumps({"offsets": offsets}).encode())
            self.offsets.update(offsets)
            self.applied_lsn = lsn
            return lsn

    def _late_mask(self, stream: str, table: pa.Table) -> tuple[np.ndarray, int]:
        """Events older than the stream's running max event time minus its
        allowed lateness (in arrival order), and the new watermark."""
        s = self.streams[stream]
        ts = np.asarray(table.column(s.timestamp).cast(pa.int64()).to_numpy(), dtype=np.int64)
        wm = self.watermarks.get(stream, INT64_MIN)
        running = np.maximum.accumulate(np.concatenate([[wm], ts]))[:-1]
        late = ts < np.where(running == INT64_MIN, INT64_MIN, running - s.allowed_lateness)
        return late, int(max(wm, ts.max())) if ts.size else wm

    def _project(self, stream: str, table: pa.Table) -> dict:
        """Each view's DuckDB projection (filter, keys, inputs) of the batch."""
        if table.num_rows == 0:
            return {}
        out = {}
        views = [(key, rt) for key, rt in self.runtimes.items() if rt.stream is not None and rt.stream.name == stream]
        query = any(rt.bare is None for _, rt in views)
        if query:
            self.con.register("__batch", table)
        try:
            for key, rt in views:
                out[key] = rt.project(self.con, table)
        finally:
            if query:
                self.con.unregister("__batch")
        return out

    def _check_projected(self, projected: dict) -> None:
        """Every view must be able to key every row it keeps: no null key, no
        key too long for its column."""
        for key, p in projected.items():
            rt = self.runtimes[key]
            for k in rt.key_names:
                col = p.column(k)
                if col.null_count:
                    raise BatchError(f"feature view {rt.name} is keyed by {k!r}, which is null in "
                                     f"{col.null_count} row(s); give every row its {k}")
            rt.table.check_keys(rt.keys_of(p))

    def _apply(self, stream: str, table: pa.Table, now: int, offsets: dict | None, projected=None) -> int:
        late, wm = self._late_mask(stream, table)
        self.watermarks[stream] = wm
        nlate = int(late.sum())
        self.late_total += nlate
        if projected is None:  # replay: project now
            projected = self._project(stream, table.filter(pa.array(~late)) if nlate else table)
        for key, p in projected.items():
            self.runtimes[key].apply(p, now)
        if offsets:
            self.offsets.update(offsets)
        return nlate

    def _check_keys(self, stream: str, table: pa.Table) -> None:
        self._check_projected(self._project(stream, table))

    def _log_offline(self, stream: str, table: pa.Table, now: int, seq: int) -> None:
        self.offline.log.append(stream, table, timestamp=self.streams[stream].timestamp, created_ts=now, seq=seq)

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

    def get_historical_features(self, entity_df, features, **kw):
        """Point-in-time training set from the offline log (see fsapp.offline)."""
        self.register_file_sources()
        self.offline.log.flush()
        return self.offline.get_historical_features(entity_df, features, **kw)

    def tick(self, now: int | None = None) -> int:
        """Time-driven updates: window values at hop boundaries, TTL eviction."""
        with self.lock:
            now = self.clock() if now is None else now
            return sum(rt.tick(now) for rt in self.runtimes.values())

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
        time recomputed from the retained window state (see `_read_as_of`)."""
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
        r = table.get_batch(keys, t)
        if not rt.aggregated:
            newer = (r.status == PRESENT) & (r.event_ts > t)
            if newer.any():
                raise AsOfOutsideHorizon(
                    f"feature view {info.name}: the online store keeps only the latest row per key, which is newer "
                    f"than as_of for {int(newer.sum())} key(s); ask /api/v1/features/historical for that time")
            return r
        rows = table.find_rows(keys)
        found = rows >= 0
        status = np.where(found, PRESENT, NOT_FOUND).astype(np.uint8)
        kinds = {f.name: f.kind for f in rt.schema.columns}
        last_ts = np.full(rows.size, INT64_MIN, dtype=np.int64)
        for (spec, names), w in zip(rt.groups, rt.windows):
            vals, exact = w.value_as_of(np.where(found, rows, 0), t)
            if (found & ~exact).any():
                raise AsOfOutsideHorizon(
                    f"feature view {info.name}: as_of is before what the online window state retains for "
                    f"{int((found & ~exact).sum())} key(s); ask /api/v1/features/historical for that time")
            for name in names:
                v, null = column_for_table(vals[name], kinds[name])
                r.values[name] = v
                r.nulls[name] = null | ~found
            last_ts = np.maximum(last_ts, np.where(found, w.key_last_ts()[np.where(found, rows, 0)], INT64_MIN))
        if rt.ttl:
            status = np.where(found & (last_ts < t - rt.ttl), OUTSIDE_MAX_AGE, status).astype(np.uint8)
        for name in r.nulls:
            r.nulls[name] = r.nulls[name] | (status != PRESENT)
        r.status = status
        r.event_ts = np.where(found, last_ts, 0)
        return r

    # ---- checkpoints and lifecycle

    def checkpoint(self) -> int:
        with self._checkpoint_lock:
            return self._checkpoint()

    def _checkpoint(self) -> int:
        with self.lock:
            lsn = self.applied_lsn
            blobs, runtimes = {}, []
            for (name, version), rt in self.runtimes.items():
                blobs[f"{name}@v{version}/table"] = rt.table.snapshot()
                for i, w in enumerate(rt.windows):
                    blobs[f"{name}@v{version}/window{i}"] = w.to_bytes()
                runtimes.append({"name": name, "version": version, "windows": len(rt.windows)})
            meta = {"watermarks": dict(self.watermarks), "offsets": dict(self.offsets), "runtimes": runtimes}
            self.offline.log.flush()  # the checkpoint lets the WAL go: its events must be in Parquet first
            self.wal.sync()
        write_checkpoint(self.ckpt_dir, lsn, blobs, meta, keep=self.keep)
        oldest = oldest_retained_lsn(self.ckpt_dir)
        if oldest is not None:
            self.wal.truncate_before(oldest)
        self.checkpoint_lsn = lsn
        return lsn

    def stats(self) -> dict:
        out = {"applied_lsn": self.applied_lsn, "checkpoint_lsn": self.checkpoint_lsn, "late_events": self.late_total,
               "offsets": dict(self.offsets),
               "views": {f"{n}@v{v}": rt.table.stats() for (n, v), rt in self.runtimes.items()}}
        for name, source in self.sources.items():
            out[name] = source.stats()
        return out

    def close(self) -> None:
        with self.lock:
            self.offline.log.flush()
            self.offline.close()
            self.wal.close()
            for rt in self.runtimes.values():
                rt.table.close()
            self.con.close()
            self.registry.close()
