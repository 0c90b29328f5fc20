"""Kafka ingestion with exactly-once effect on the online state.

Every stream with a `topic` is consumed with confluent-kafka. The engine's
own offsets are the truth: each batch is pushed with
`offsets={"<topic>/<partition>": next offset}`, so the rows and the offsets
that produced them are one WAL record (and one checkpoint). On start, and on
every (re)assignment, each partition is sought to `engine.offsets` (the start
of the partition when unknown); Kafka's committed offsets are written only
for monitoring (lag in Kafka tools) and never read. A kill -9 at any point
therefore neither loses an event nor counts one twice.

Malformed messages never stop ingestion: bad JSON, a non-object value, or
rows the engine refuses (missing key, a value that does not convert: found by
bisecting a refused batch with `Engine.validate`) go to a dead-letter topic
or file with the reason, and their offsets advance with the batch (or through
`Engine.advance_offsets` when a batch has no good row). See docs/kafka.md.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time

import pyarrow as pa
from confluent_kafka import (OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException,
                             TopicPartition)

from fscore.errors import KeyEncodingError
from fsapp.engine.avro import AvroDecoder, AvroError
from fsapp.engine.errors import BatchError
from fsapp.engine.kafka_config import DeadLetter, DeadLetterFile, DeadLetterTopic, KafkaConfig
from fsapp.registry.errors import RepoError

log = logging.getLogger("fstore.kafka")
ROW_ERRORS = (BatchError, KeyEncodingError)  # the row's fault: dead-letter it; anything else is ours: retry
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class Malformed(ValueError):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _epoch_us(v, field: str) -> int:
    """One event time → µs UTC, by the rules of `fsapp.engine.ingest`
    (ISO-8601, or epoch s / ms / µs by magnitude)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise Malformed("schema", f"timestamp field {field!r} is {type(v).__name__}; use ISO-8601 or epoch numbers")
    if isinstance(v, str):
        try:
            d = dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            raise Malformed("schema", f"timestamp field {field!r}: {v!r} is not ISO-8601 or an epoch number") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        delta = d - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    mag = abs(v)
    scale = 1_000_000 if mag < 1e11 else 1_000 if mag < 1e14 else 1
    return int(round(v * scale)) if isinstance(v, float) else v * scale


class AvroStreamDecoder:
    """Avro message values (the stream's .avsc schema) → rows; the same
    field rules as JSON (undeclared fields ignored, Kafka timestamp fallback)."""

    def __init__(self, stream, config):
        path = stream.avro_schema
        if not os.path.isabs(path):
            path = os.path.join(config.repo_root, path)
        self.json = StreamDecoder(stream)
        self.avro = AvroDecoder(path, config.avro_framing)

    def row(self, msg) -> dict:
        value = msg.value()
        if value is None:
            raise Malformed("empty", "the message has no value (a tombstone); send an Avro record")
        try:
            obj = self.avro.decode(value)
        except AvroError as e:
            raise Malformed("avro", f"the value does not decode with {self.avro.path}: {e}") from None
        return self.json._with_time(msg, obj)

    def table(self, rows: list[dict]) -> pa.Table:
        return self.json.table(rows)


class StreamDecoder:
    """JSON message values → rows of one stream. Fields the stream does not
    declare are ignored (producers may add fields); a missing timestamp
    field falls back to the Kafka message timestamp."""

    def __init__(self, stream):
        self.stream = stream
        self.names = [c.name for c in stream.columns]
        self.ts = stream.timestamp

    def row(self, msg) -> dict:
        value = msg.value()
        if value is None:
            raise Malformed("empty", "the message has no value (a tombstone); send a JSON object")
        try:
            obj = json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            raise Malformed("json", f"the value is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise Malformed("not_object", f"the value is a JSON {type(obj).__name__}; send one object per event")
        return self._with_time(msg, obj)

    def _with_time(self, msg, obj: dict) -> dict:
        """The stream's fields of a decoded value; the Kafka timestamp when
        the value has no event time (shared by the JSON and Avro decoders)."""
        row = {k: obj[k] for k in self.names if k in obj}
        t = row.get(self.ts)
        if t is None:
            kind, ms = msg.timestamp()
            if kind == TIMESTAMP_NOT_AVAILABLE:
                raise Malformed("schema", f"no {self.ts!r} field and no Kafka timestamp; every event needs a time")
            row[self.ts] = ms * 1000
        else:
            row[self.ts] = _epoch_us(t, self.ts)
        return row

    def table(self, rows: list[dict]) -> pa.Table:
        """Rows → Arrow, the timestamp as timestamp[us] so no unit guessing
        happens twice; a column of mixed JSON types becomes text for the
        engine's DuckDB casts to accept or explain."""
        cols = {}
        for name in self.names:
            vals = [r.get(name) for r in rows]
            if name == self.ts:
                cols[name] = pa.array(vals, pa.timestamp("us", tz="UTC"))
                continue
            try:
                cols[name] = pa.array(vals)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[name] = pa.array([None if v is None else json.dumps(v) if isinstance(v, (dict, list))
                                       else str(v) for v in vals])
        return pa.table(cols)


class KafkaIngest:
    """Consumes every stream that has a topic into `engine`, in a thread
    (`start()` / `stop()`), or step by step with `poll_once()`."""

    def __init__(self, engine, config: KafkaConfig, *, dead_letters=None):
        self.engine = engine
        self.config = config
        self.topics: dict[str, str] = {}  # topic -> stream
        for name, s in sorted(engine.streams.items()):
            if s.topic:
                if s.topic in self.topics:
                    raise RepoError(f"streams {self.topics[s.topic]} and {name} both read topic {s.topic!r}; "
                                    "give each topic one stream (offsets are kept per topic partition)")
                if s.format not in ("json", "avro"):
                    raise RepoError(f"stream {name}: format {s.format!r} is not consumed from Kafka "
                                    "(json or avro; see docs/kafka.md)")
                self.topics[s.topic] = name
        self.decoders = {t: (AvroStreamDecoder(engine.streams[s], config) if engine.streams[s].format == "avro"
                             else StreamDecoder(engine.streams[s])) for t, s in self.topics.items()}
        self.dead_letters = dead_letters or (DeadLetterFile(config.dead_letter_file) if config.dead_letter_file
                                             else DeadLetterTopic(config))
        self.consumer = Consumer({
            **config.client_properties(), "group.id": config.group_id,
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": False,
            "session.timeout.ms": int(config.properties.get("session.timeout.ms", 10_000)),
        })
        self.assigned: set[tuple[str, int]] = set()
        self.counts = {"consumed": {}, "ingested": {}, "dead_lettered": {}}
        self.dead_by_kind: dict[tuple[str, str], int] = {}
        self.lag: dict[str, int] = {}
        self.errors = 0
        self.last_error = ""
        self._committed: dict[tuple[str, int], int] = {}
        self._next_refresh = 0.0
        self._next_lag = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        engine.sources["kafka"] = self

    # ---- assignment

    def _start_offset(self, topic: str, partition: int) -> int:
        off = self.engine.offsets.get(f"{topic}/{partition}")
        return int(off) if off is not None else OFFSET_BEGINNING

    def _positioned(self, parts) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._start_offset(tp.topic, tp.partition)) for tp in parts]

    def _on_assign(self, consumer, parts) -> None:
        # the engine's offsets, not the group's committed ones
        consumer.assign(self._positioned(parts))
        self.assigned = {(tp.topic, tp.partition) for tp in parts}
        log.info("kafka: assigned %s", sorted(self.assigned))

    def _on_revoke(self, consumer, parts) -> None:
        # another member takes these partitions over from our offsets: make
        # the state durable in a checkpoint and tell the group where we are
        if parts:
            try:
                self.engine.checkpoint()
            except OSError as e:  # a full disk: the WAL holds the state; the group's offsets are still ours
                log.error("kafka: checkpoint on revoke failed (%s); committing offsets anyway", e)
            self._commit(asynchronous=False)
        consumer.unassign()
        self.assigned = set()

    def _on_lost(self, consumer, parts) -> None:
        consumer.unassign()
        self.assigned = set()

    def _refresh_assignment(self) -> None:
        """`assign: all`: every partition of every topic, partitions added
        later included (checked every metadata_refresh_s)."""
        md = self.consumer.list_topics(timeout=10)
        new = []
        for topic in self.topics:
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None:
                if not any(t == topic for t, _ in self.assigned):
                    log.warning("kafka: topic %s does not exist yet; waiting for it", topic)
                continue
            new += [TopicPartition(topic, p) for p in meta.partitions if (topic, p) not in self.assigned]
        if new:
            self.consumer.incremental_assign(self._positioned(new))
            self.assigned |= {(tp.topic, tp.partition) for tp in new}
            log.info("kafka: assigned %s", sorted((tp.topic, tp.partition) for tp in new))

    def _subscribe(self) -> None:
        if self.config.assign == "group":
            self.consumer.subscribe(sorted(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_lost)
        else:
            self._refresh_assignment()
            self._next_refresh = time.monotonic() + self.config.metadata_refresh_s

    def _rewind(self) -> None:
        """After a failed batch: read again from what the engine holds."""
        for topic, partition in sorted(self.assigned):
            try:
                self.consumer.seek(TopicPartition(topic, partition, self._start_offset(topic, partition)))
            except KafkaException as e:  # not fetching yet: the assignment's offset applies anyway
                log.debug("kafka: seek %s/%s: %s", topic, partition, e)

    # ---- the loop

    def start(self) -> "KafkaIngest":
        self._subscribe()
        self._thread = threading.Thread(target=self._run, name="fstore-kafka", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.poll_once()
                backoff = 0.5
            except Exception as e:  # the broker, the WAL, the DLQ: log, wait, re-read from the engine's offsets
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("kafka: batch failed, retrying from the engine's offsets in %.1f s: %s", backoff,
                          self.last_error)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, 10.0)
                self._rewind()

    def poll_once(self) -> int:
        """Consumes one batch into the engine; returns messages accounted for."""
        now = time.monotonic()
        if self.config.assign == "all" and now >= self._next_refresh:
            self._refresh_assignment()
            self._next_refresh = now + self.config.metadata_refresh_s
        msgs = self.consumer.consume(self.config.batch_size, self.config.poll_timeout_ms / 1000)
        by_topic: dict[str, list] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", err)
                continue
            by_topic.setdefault(m.topic(), []).append(m)
        n = 0
        for topic, batch in by_topic.items():
            if topic in self.topics:
                n += self._ingest(topic, batch)
        if n:
            self._commit(asynchronous=True)
        if now >= self._next_lag:
            self._update_lag()
            self._next_lag = now + 1.0
        return n

    def _ingest(self, topic: str, msgs: list) -> int:
        stream = self.topics[topic]
        decoder = self.decoders[topic]
        offsets: dict[str, int] = {}
        rows, dead = [], []
        for m in msgs:
            key = f"{topic}/{m.partition()}"
            offsets[key] = max(offsets.get(key, 0), m.offset() + 1)
            try:
                rows.append((m, decoder.row(m)))
            except Malformed as e:
                dead.append(self._letter(m, stream, e.kind, str(e)))
        if rows:
            table = decoder.table([r for _, r in rows])
            try:
                if dead:
                    self._send_dead(dead)
                    dead = []
                self.engine.push(stream, table, offsets=offsets)
            except ROW_ERRORS:
                good, refused = self._split_refused(stream, decoder, rows)
                self._send_dead(dead + [self._letter(m, stream, "schema", reason) for m, reason in refused])
                dead = []
                self._push_good(stream, decoder, good, offsets)
                rows = good
        if dead or not rows:
            self._send_dead(dead)
            self.engine.advance_offsets(offsets)
        self._count("consumed", topic, len(msgs))
        self._count("ingested", topic, len(rows))
        return len(msgs)

    def _split_refused(self, stream: str, decoder: StreamDecoder, rows: list) -> tuple[list, list]:
        """Bisects a batch the engine refused: (good rows, [(msg, reason)])."""
        refused = []

        def search(lo: int, hi: int, known_bad: bool) -> None:
            if not known_bad:
                try:
                    self.engine.validate(stream, decoder.table([r for _, r in rows[lo:hi]]))
                    return
                except ROW_ERRORS as e:
                    if hi - lo == 1:
                        refused.append((lo, str(e)))
                        return
            mid = (lo + hi) // 2
            search(lo, mid, False)
            search(mid, hi, False)

        if len(rows) == 1:
            try:
                self.engine.validate(stream, decoder.table([rows[0][1]]))
            except ROW_ERRORS as e:
                refused.append((0, str(e)))
        else:
            search(0, len(rows), True)
        bad = {i for i, _ in refused}
        return [r for i, r in enumerate(rows) if i not in bad], [(rows[i][0], reason) for i, reason in refused]

    def _push_good(self, stream: str, decoder: StreamDecoder, good: list, offsets: dict) -> None:
        if not good:
            return
        try:
            self.engine.push(stream, decoder.table([r for _, r in good]), offsets=offsets)
        except ROW_ERRORS:
            # rows valid one by one can still clash as a batch (a column's JSON
            # types mixing): push them one at a time, in order
            for i, (m, r) in enumerate(good):
                last = i == len(good) - 1
                self.engine.push(stream, decoder.table([r]), offsets=offsets if last else
                                 {f"{m.topic()}/{m.partition()}": m.offset() + 1})

    def _letter(self, m, stream: str, kind: str, reason: str) -> DeadLetter:
        return DeadLetter(m.value(), m.key(), m.topic(), m.partition(), m.offset(), stream, kind, reason)

    def _send_dead(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        for d in letters:
            self.dead_letters.send(d)
        self.dead_letters.flush()  # before the offsets that skip them become durable
        for d in letters:
            self._count("dead_lettered", d.topic, 1)
            self.dead_by_kind[(d.topic, d.kind)] = self.dead_by_kind.get((d.topic, d.kind), 0) + 1
            log.warning("kafka: dead letter %s/%s@%s (%s): %s", d.topic, d.partition, d.offset, d.kind, d.reason)

    def _count(self, what: str, topic: str, n: int) -> None:
        c = self.counts[what]
        c[topic] = c.get(topic, 0) + n

    # ---- offsets in Kafka (monitoring only) and lag

    def _commit(self, asynchronous: bool) -> None:
        parts = []
        for key, off in list(self.engine.offsets.items()):
            topic, _, p = key.rpartition("/")
            if topic in self.topics and (topic, int(p)) in self.assigned and self._committed.get((topic, int(p))) != off:
                parts.append(TopicPartition(topic, int(p), int(off)))
        if not parts:
            return
        try:
            self.consumer.commit(offsets=parts, asynchronous=asynchronous)
            self._committed.update({(tp.topic, tp.partition): tp.offset for tp in parts})
        except KafkaException as e:  # monitoring only: never worth stopping ingestion for
            log.warning("kafka: committing offsets for monitoring failed: %s", e)

    def _update_lag(self) -> None:
        lag = {}
        for topic, partition in sorted(self.assigned):
            try:
                # cached: the high watermark of the last fetch response, no round trip
                _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if hi is None or hi < 0:
                continue
            pos = self.engine.offsets.get(f"{topic}/{partition}", 0)
            lag[f"{topic}/{partition}"] = max(0, int(hi) - int(pos))
        self.lag = lag

    def stats(self) -> dict:
        return {"mode": self.config.assign, "topics": dict(self.topics),
                "consumed": dict(self.counts["consumed"]), "ingested": dict(self.counts["ingested"]),
                "dead_lettered": dict(self.counts["dead_lettered"]),
                "dead_lettered_by_kind": {f"{t}:{k}": n for (t, k), n in self.dead_by_kind.items()},
                "lag": dict(self.lag), "assigned": sorted(f"{t}/{p}" for t, p in self.assigned),
                "errors": self.errors, "last_error": self.last_error,
                "running": self._thread is not None and self._thread.is_alive()}

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finishes the current batch, commits, closes the consumer (a group
        member leaves the group: its revoke checkpoints)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._closed:
            return
        self._closed = True
        self._commit(asynchronous=False)
        try:
            self.consumer.close()
        finally:
            self.dead_letters.close()
            self.engine.sources.pop("kafka", None)
