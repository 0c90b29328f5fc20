"""What the REST API needs from a store, and `EngineBackend`: that protocol
over an in-process `Engine` (embedded use, tests, a single-process server).

The serving runtime provides another implementation for gunicorn workers
(reads from shared memory, writes forwarded to the engine process); the
resources only ever see this protocol. Arguments arrive validated in shape
(the resources check JSON types); the backend raises domain errors for
everything that depends on the definitions, and `fsapp.api.errors` maps
them to statuses.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import duckdb
import pyarrow as pa

from fsapp.api.metrics import MetricsRegistry
from fsapp.errors import EntityDataFrameError
from fsapp.registry.errors import NotFoundError
from fsapp.registry.render import to_sql
from fsapp.registry.model import KIND_ORDER

_CALLER_DATA_ERRORS = (duckdb.ConversionException, duckdb.InvalidInputException, duckdb.OutOfRangeException,
                       duckdb.TypeMismatchException)
KINDS = KIND_ORDER  # every registry kind (the HTTP registry endpoint is per kind)


@runtime_checkable
class Backend(Protocol):
    def online(self, features: list[str] | None, feature_service: str | None, entities: dict[str, list],
               as_of: int | None, full_feature_names: bool) -> bytes:
        """The JSON text of the Feast-shaped column-major response
        (fsapp.engine.online); `as_of` µs UTC (None: now)."""

    def push(self, stream: str, rows, idempotency_key: str | None = None) -> dict:
        """{"accepted", "late", "lsn"} once durable. `rows`: list of dicts,
        dict of lists or an Arrow table. A retry with the same
        `idempotency_key` returns the first answer and applies nothing."""

    def historical(self, entities: pa.Table, features: list[str], full_feature_names: bool) -> pa.Table:
        """Point-in-time rows; `entities` has an `event_timestamp` column."""

    def materialize(self, start: int, end: int, views: list[str] | None) -> dict:
        """{"views": {name: keys written}, "skipped": {name: why}, "start",
        "end"} once durable."""

    def registry_list(self, kind: str) -> list[dict]: ...

    def registry_get(self, kind: str, name: str, version: int | None) -> dict: ...

    def lineage(self, name: str) -> dict: ...

    def health(self) -> dict: ...

    def ready(self) -> tuple[bool, str]:
        """(ready, reason when not)."""

    def cluster(self) -> dict:
        """This node's Kafka partitions (fsapp.engine.kafka.KafkaIngest.cluster);
        `mode` None without Kafka."""

    def metrics_text(self) -> str:
        """Store-side metrics (ingest, late events, evictions, freshness) in
        Prometheus text format."""


def entry_json(entry) -> dict:
    """A registry entry as the API answers it: the stored entry plus `sql`,
    the statement that recreates this version (what `fstore registry
    describe` prints; the web UI shows it and diffs two versions of it)."""
    keys = [k for k, _ in entry.resolved.get("keys", [])]
    return {**entry.to_dict(), "sql": to_sql(entry.definition, keys=keys) + ";"}


def registry_list(registry, kind: str) -> list[dict]:
    """Registry reads as the API answers them (shared by every backend)."""
    return [entry_json(e) for e in sorted(registry.list(kind), key=lambda e: e.name)]


def registry_get(registry, kind: str, name: str, version: int | None) -> dict:
    entry = registry.get(name, version)
    if entry.kind != kind:
        # "NAME is a KIND, not a KIND": clients match on "NAME is a " to ask the next kind (Client.describe)
        raise NotFoundError(f"{name} is a {entry.kind}, not a {kind}; ask /api/v1/registry/{entry.kind}/{name}")
    return entry_json(entry)


class EngineBackend:
    """The protocol over one in-process `fsapp.engine.Engine`."""

    def __init__(self, engine, clock=None):
        self.engine = engine
        self.clock = clock or engine.clock
        self.metrics = MetricsRegistry()
        m = self.metrics
        self.ingested = m.counter("fstore_ingest_rows_total", "Events accepted by push, by stream", ("stream",))
        self.late = m.counter("fstore_late_events_total",
                              "Events beyond the allowed lateness (logged offline, not applied online)", ("stream",))
        self.materialized = m.counter("fstore_materialized_rows_total", "Rows written by materialize", ("view",))
        self.evictions = m.counter("fstore_online_evictions_total",
                                 "Keys evicted from an online table since it was created", ("view", "reason"))
        self.rows = m.gauge("fstore_online_rows", "Live keys in an online table", ("view",))
        self.capacity = m.gauge("fstore_online_capacity_rows", "Rows an online table holds before it grows "
                                "(or, at max_keys, evicts)", ("view",))
        self.grown_ahead = m.counter("fstore_online_tables_grown_ahead_total",
                                     "Online tables grown before a push found them full (the copy without the "
                                     "engine lock)", ())
        self.state_bytes = m.gauge("fstore_online_state_bytes", "Live bytes of a view's online state (table rows "
                                   "and window state; what online.max_memory bounds)", ("view",))
        self.lag = m.gauge("fstore_freshness_lag_seconds",
                           "Wall-clock now minus the newest event time seen on the stream", ("stream",))
        self.lsn = m.gauge("fstore_wal_applied_lsn", "Last WAL record applied", ())
        self.kafka_consumed = m.counter("fstore_kafka_consumed_total", "Kafka messages consumed (ingested or "
                                        "dead-lettered)", ("topic",))
        self.kafka_ingested = m.counter("fstore_kafka_ingested_rows_total", "Kafka messages pushed as rows",
                                        ("topic",))
        self.kafka_dead = m.counter("fstore_kafka_dead_letters_total",
                                    "Malformed Kafka messages sent to the dead-letter topic or file", ("topic", "kind"))
        self.kafka_lag = m.gauge("fstore_kafka_lag_messages",
                                 "High watermark minus the engine's offset, per partition", ("topic", "partition"))
        self.kafka_paused = m.counter("fstore_kafka_backpressure_seconds_total",
                                      "Seconds Kafka ingestion paused to leave the engine to REST pushes", ())
        self.kafka_errors = m.counter("fstore_kafka_errors_total",
                                      "Kafka batches retried after an error (broker, WAL, dead-letter sink)", ())
        self.kafka_rereads = m.counter("fstore_kafka_rereads_total",
                                       "Kafka batches read a second time, with their messages: they held a "
                                       "message the batch reader does not take, or a rebalance came mid-batch", ())
        self.checkpoint_failures = m.counter("fstore_checkpoint_failures_total",
                                             "Checkpoints that failed (e.g. a full disk); the next one retries", ())
        self.replay_backlog = m.gauge("fstore_replay_backlog_seconds",
                                      "Work a restart would replay now (records logged since the last checkpoint)",
                                      ())

    # ---- reads

    def online(self, features, feature_service, entities, as_of, full_feature_names):
        return self.engine.get_online_json(features, feature_service, entities, as_of=as_of,
                                           full_feature_names=full_feature_names)

    def historical(self, entities, features, full_feature_names):
        try:
            return self.engine.get_historical_features(entities, features,
                                                       full_feature_names=full_feature_names).to_arrow()
        except _CALLER_DATA_ERRORS as e:
            # DuckDB fails lazily, e.g. when an entity key's values cannot be
            # cast to the view's key type: that is the caller's data. Other
            # DuckDB errors (binder, catalog) are ours and stay 500s.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EntityDataFrameError(f"the entity rows cannot be joined with the features: {first}; give each "
                                       "key column the type of the entity's key") from None

    # ---- writes

    def push(self, stream, rows, idempotency_key=None):
        res = self.engine.push(stream, rows, idempotency_key=idempotency_key)
        with self.metrics.lock:
            self.ingested.inc(res.accepted, stream=stream)
            self.late.inc(res.late, stream=stream)
        return res.to_dict()

    def materialize(self, start, end, views):
        out = self.engine.materialize(start, end, views, now=self.clock())
        with self.metrics.lock:
            for name, n in out["views"].items():
                self.materialized.inc(n, view=name)
        return out

    # ---- registry

    def registry_list(self, kind):
        return registry_list(self.engine.registry, kind)

    def registry_get(self, kind, name, version):
        return registry_get(self.engine.registry, kind, name, version)

    def lineage(self, name):
        return self.engine.registry.lineage(name)

    # ---- operations

    def health(self):
        eng = self.engine
        return {"status": "ok", "applied_lsn": eng.applied_lsn, "checkpoint_lsn": eng.checkpoint_lsn,
                "late_events": eng.late_total, "views": len(eng.runtimes), "streams": sorted(eng.streams)}

    def ready(self):
        eng = self.engine
        wal = eng.wal
        if wal.closed:
            return False, "the write-ahead log is closed (the engine is shutting down)"
        if wal.poisoned:
            return False, "an fsync failed: the write-ahead log refuses writes until the engine restarts"
        if eng.checkpoint_error:
            return False, (f"the last checkpoint failed ({eng.checkpoint_error}); writes are still logged and "
                           "acknowledged, but the log grows until a checkpoint succeeds: free disk space in "
                           f"{eng.data_dir}")
        source = eng.sources.get("kafka")
        if source is not None:
            return source.readiness()
        return True, ""

    def cluster(self):
        source = self.engine.sources.get("kafka")
        if source is not None:
            return source.cluster()
        return {"node": None, "mode": None, "group_id": None, "member_id": None, "topics": {}, "partitions": [],
                "parked": [], "url": None, "members": None, "owners": None, "partitioner": "murmur2"}

    def metrics_text(self):
        eng = self.engine
        now = self.clock()
        with self.metrics.lock:
            state = eng.state_bytes()
            for (name, version), rt in eng.runtimes.items():
                s = rt.table.stats()
                view = f"{name}@v{version}"
                self.state_bytes.set(state[(name, version)], view=view)
                self.evictions.set(s["evicted_capacity"], view=view, reason="capacity")
                self.evictions.set(s["evicted_expired"], view=view, reason="expired")
                self.rows.set(s["rows"], view=view)
                self.capacity.set(s["capacity"], view=view)
            for stream, by_part in eng.watermarks.items():
                if by_part:  # the stream's newest event, whichever partition brought it
                    self.lag.set(max(0.0, (now - max(by_part.values())) / 1e6), stream=stream)
            self.lsn.set(eng.applied_lsn)
            self.checkpoint_failures.set(eng.checkpoint_failures)
            self.replay_backlog.set(eng.replay_backlog_s)
            self.grown_ahead.set(eng.tables_grown_ahead)
            source = eng.sources.get("kafka")
            if source is not None:
                k = source.stats()
                for topic, n in k["consumed"].items():
                    self.kafka_consumed.set(n, topic=topic)
                for topic, n in k["ingested"].items():
                    self.kafka_ingested.set(n, topic=topic)
                for key, n in k["dead_lettered_by_kind"].items():
                    topic, _, kind = key.rpartition(":")
                    self.kafka_dead.set(n, topic=topic, kind=kind)
                for key, n in k["lag"].items():
                    topic, _, partition = key.rpartition("/")
                    self.kafka_lag.set(n, topic=topic, partition=partition)
                self.kafka_errors.set(k["errors"])
                self.kafka_paused.set(k["paused_s"])
                self.kafka_rereads.set(k["rereads"])
        return self.metrics.render()
