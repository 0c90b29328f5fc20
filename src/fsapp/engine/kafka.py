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

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from fscore import jsonrows
from fscore.kafkafetch import Packed
from fscore.errors import KeyEncodingError
from fsapp.engine.cluster import NO_PARTITION, PartitionKeys, PartitionProgress
from fsapp.engine.errors import BatchError
from fsapp.engine.kafka_config import DeadLetter, DeadLetterFile, DeadLetterTopic, KafkaConfig
from fsapp.engine.kafka_decode import AvroStreamDecoder, Malformed, StreamDecoder
from fsapp.engine import kafka_native
from fsapp.engine.members import Membership, members_topic, node_url
from fsapp.registry.errors import RepoError

COMMIT_EVERY_S = 0.5
# messages a consume() call takes: a batch is read a chunk at a time and each
# chunk's Message objects are dropped as soon as they are scanned (measured:
# consume and scan 0.60-0.68M messages/s holding 20,000 at once, 0.75-0.93M/s
# in chunks of 1,000 freed as they go; the bare loop is fastest at ~1,000 too)
CONSUME_CHUNK = 1000
log = logging.getLogger("fstore.kafka")
ROW_ERRORS = (BatchError, KeyEncodingError)  # the row's fault: dead-letter it; anything else is ours: retry


def _offsets_of(msgs: list) -> dict:
    """{"<topic>/<partition>": next offset} after these messages."""
    out: dict = {}
    for m in msgs:
        key = f"{m.topic()}/{m.partition()}"
        out[key] = max(out.get(key, 0), m.offset() + 1)
    return out


def _partitions(parts: np.ndarray) -> np.ndarray:
    """The distinct partitions (small non-negative ints) of a batch, sorted.
    PERF: counted, not np.unique (numpy 2 sorts or hashes: ~0.3-0.6 ms a
    20,000-message batch against ~0.05 ms, three times a batch)."""
    return np.flatnonzero(np.bincount(parts)) if parts.size else np.zeros(0, dtype=np.int64)


def _next_offsets(topic: str, parts: np.ndarray, offs: np.ndarray) -> dict:
    """{"<topic>/<partition>": next offset} after a batch's messages: each
    partition's last message's offset + 1 (librdkafka hands a partition's
    messages over in offset order)."""
    present = _partitions(parts)
    if not present.size:
        return {}
    last = np.full(int(present[-1]) + 1, -1, dtype=np.int64)
    np.maximum.at(last, parts, np.arange(parts.size, dtype=np.int64))  # each partition's last message
    return {f"{topic}/{p}": int(offs[last[p]]) + 1 for p in present.tolist()}


class _NeedMessages(Exception):
    """A batch read lean needs its Message objects after all."""


class _Dropped(Sequence):
    """The messages of a batch read lean, dropped right after the scan:
    reading one (a dead letter, a missing event time, a refused row, any
    message the batch decoder does not take) raises _NeedMessages, and
    `poll_once` reads the batch again keeping them."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, int) and not -self.n <= i < self.n:
            raise IndexError(i)  # (iteration ends here)
        raise _NeedMessages()


class _Polled:
    """One topic's messages of a poll batch with what `jsonrows.scan` took
    of each: value, partition, offset (`msgs` a _Dropped when read lean;
    `values` a kafkafetch.Packed when read lean through librdkafka)."""

    __slots__ = ("msgs", "values", "parts", "offs")

    def __init__(self, msgs, values: list, parts: np.ndarray, offs: np.ndarray):
        self.msgs, self.values, self.parts, self.offs = msgs, values, parts, offs

    @classmethod
    def of(cls, msgs: list) -> "_Polled":
        """Messages that are not errors (a poll batch's after poll_once's check)."""
        values, parts, offs, errors, _ = jsonrows.scan(msgs)
        if errors:
            raise ValueError(f"messages {errors[:5]} are errors, not events")
        return cls(msgs, values, parts, offs)

    def take(self, idx: np.ndarray) -> "_Polled":
        ix = idx.tolist()
        msgs = _Dropped(len(ix)) if isinstance(self.msgs, _Dropped) else [self.msgs[i] for i in ix]
        values = self.values.take(idx) if isinstance(self.values, Packed) else [self.values[i] for i in ix]
        return _Polled(msgs, values, self.parts[idx], self.offs[idx])


def _messages(by_topic: dict) -> int:
    """The messages of a batch read ({topic: (_Polled, decoded or None)})."""
    return sum(len(b.msgs) for b, _ in by_topic.values())


class KafkaIngest:
    """Consumes every stream that has a topic into `engine`, in a thread
    (`start()` / `stop()`), or step by step with `poll_once()`."""

    def __init__(self, engine, config: KafkaConfig, *, dead_letters=None, node: str | None = None,
                 peer_port: int | None = None):
        self.engine = engine
        self.config = config
        self.node = node  # host:port this node serves on (GET /api/v1/cluster)
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
        self.group = config.assign == "group"
        if self.group:
            self._check_keyed_like_topics()
        self.decoders = {t: (AvroStreamDecoder(engine.streams[s], config) if engine.streams[s].format == "avro"
                             else StreamDecoder(engine.streams[s])) for t, s in self.topics.items()}
        self.dead_letters = dead_letters or (DeadLetterFile(config.dead_letter_file) if config.dead_letter_file
                                             else DeadLetterTopic(config))
        properties = {
            **config.consumer_properties(), "group.id": config.group_id,
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": False,
            "session.timeout.ms": int(config.properties.get("session.timeout.ms", 10_000)),
        }
        # batches through librdkafka's C API, no Message object a message (kafka_native;
        # in group mode a confluent-kafka consumer holds the membership, its partitions paused)
        why = (None if config.native_fetch else "native_fetch: false") or kafka_native.available()
        self.native = why is None
        if why and config.native_fetch:
            log.info("kafka: reading through confluent-kafka's consume(): %s", why)
        self.consumer = kafka_native.NativeConsumer(properties) if self.native else Consumer(properties)
        self.assigned: set[tuple[str, int]] = set()
        # group mode: revoked partitions whose keys are hidden and kept, with their
        # offsets, until the next assignment gives them back or not
        self.parked: set[tuple[str, int]] = set()
        self.counts = {"consumed": {}, "ingested": {}, "dead_lettered": {}}
        self.dead_by_kind: dict[tuple[str, str], int] = {}
        self.lag: dict[str, int] = {}
        self.errors = 0
        self.last_error = ""
        self._committed: dict[tuple[str, int], int] = {}
        self._next_refresh = 0.0
        self._next_lag = 0.0
        self._next_commit = 0.0
        self._stop = threading.Event()
        # assign all, or group mode through the fetcher: the next batch is consumed and decoded by a thread of its own
        # while this one's engine applies the last (`_read`); the consumer and the
        # decoders are used by one thread at a time: the read-ahead is joined
        # before this thread touches either again
        self._reader = (ThreadPoolExecutor(1, thread_name_prefix="fstore-kafka-read")
                        if config.read_ahead and (not self.group or self.native) else None)
        self._reading: Future | None = None  # the read-ahead in flight
        self._dead_sent: set = set()  # (topic, partition, offset) of dead letters sent, not yet behind the offsets
        self._ahead: dict | None = None  # what it read: {topic: (_Polled, decoded or None)}
        self._seen_foreground = engine.foreground_pushes
        self.paused_s = 0.0  # time given back to REST pushes (backpressure)
        # batches are read lean (messages dropped once scanned) unless one
        # needed its messages lately: then the next _keep_left keep them
        self._keep_left, self._keep_next = 0, 1
        # (never lean when a decoder reads message by message: Avro, JSON with
        # types only the per-message reader takes)
        self._lean = all(isinstance(d, StreamDecoder) and d.fields is not None for d in self.decoders.values())
        self.rereads = 0  # batches read again: lean ones that needed their messages, ones across a rebalance,
        # one read ahead bigger than a shared batch when REST pushes began
        self._thread: threading.Thread | None = None
        self._closed = False
        # group mode (fsapp.engine.cluster): the partition of each key, and recovering/live per partition
        self.keys = PartitionKeys(engine.row_partitions)
        self._recovering: dict[str, set[int]] = {}  # topic -> its partitions whose keys are hidden
        self.progress = PartitionProgress()
        self.partition_counts: dict[str, int] = {}
        self.dropped_keys = 0
        self.rebalances = 0
        # assignments, revokes and losses served: a batch read across one is not
        # applied but read again from the engine's offsets (an assignment sought
        # the partitions back there: applied, it would count twice; after a
        # revoke or a loss, one rule: nothing read across a handoff is applied)
        self._handoffs = 0
        self._next_progress = 0.0
        self.member_id: str | None = None
        # the key columns each topic is partitioned by (its views' shared key)
        self.topic_keys: dict[str, list[str]] = {t: self._key_of(t) for t in self.topics} if self.group else {}
        self.url = (config.advertised_url or node_url(node)) if self.group else None
        # where this node's forwarded reads go (fsapp.serve.peer): its host, the peer port
        self.peer = (f"{self.url.rsplit(':', 1)[0]}:{peer_port}" if self.url and peer_port and
                     self.url.rsplit(":", 1)[-1].isdigit() else None)
        self.membership = None
        if self.group and self.url:
            session_s = int(config.properties.get("session.timeout.ms", 10_000)) / 1000
            self.membership = Membership(config.client_properties(),
                                         config.members_topic or members_topic(config.group_id), self.url,
                                         peer=self.peer, stale_s=max(15.0, 3 * session_s))
        if self.group:
            why = ("in kafka.assign: group the keys of stream {s} belong to the partitions of topic {t}, each owned "
                   "by one node: a write that does not come from the topic would live on this node only. Produce "
                   "it to {t} instead (see docs/kafka.md, scale-out)")
            for t, s in self.topics.items():
                engine.partitioned[s] = why.format(s=s, t=t)
            engine.on_applied = self.keys.note
            engine.before_applied = self.keys.before
        engine.sources["kafka"] = self

    def _check_keyed_like_topics(self) -> None:
        """Group mode: a view keyed by an entity its topic is not partitioned
        by would hold partial values on every node. Views of one stream that
        share no key column cannot all follow the topic's partitioning: refuse.
        (A single view keyed unlike its topic is found at run time: keys that
        arrive from two partitions, `PartitionKeys.split`.)"""
        for topic, stream in sorted(self.topics.items()):
            views = self._views_of(topic)
            if len(views) >= 2 and not self._key_of(topic):
                keyed = ", ".join(f"{rt.name} by {'+'.join(rt.key_names)}" for rt in views)
                raise RepoError(f"kafka.assign: group: stream {stream} feeds views keyed by different entities "
                                f"({keyed}); each node owns the keys of its partitions of topic {topic}, which can "
                                "follow one of them only, so the others would hold partial values on every node. "
                                "Feed each entity from a topic keyed by it, set ONLINE = FALSE on the others, or "
                                "use assign: all (see docs/kafka.md, scale-out)")

    def _key_of(self, topic: str) -> list[str]:
        """The key columns the topic's views share (in the first view's
        order); empty when they share none."""
        views = self._views_of(topic)
        if not views:
            return []
        common = set.intersection(*(set(rt.key_names) for rt in views))
        return [k for k in views[0].key_names if k in common]

    def _views_of(self, topic: str) -> list:
        """The online views of the topic's stream, by name."""
        stream = self.topics.get(topic)
        views = (rt for rt in self.engine.runtimes.values() if rt.stream is not None and rt.stream.name == stream)
        return sorted(views, key=lambda rt: rt.name)

    # ---- assignment

    def _start_offset(self, topic: str, partition: int) -> int:
        off = self.engine.offsets.get(f"{topic}/{partition}")
        return int(off) if off is not None else OFFSET_BEGINNING

    def _positioned(self, parts) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._start_offset(tp.topic, tp.partition)) for tp in parts]

    def _on_assign(self, consumer, parts) -> None:
        # partitions parked at the revoke and not given back: their keys go now
        new = {(tp.topic, tp.partition) for tp in parts}
        gone = self.parked - new
        if gone:
            self._drop_partitions([TopicPartition(t, p) for t, p in sorted(gone)], "not reassigned", kept=new)
        kept = self.parked & new
        self.parked = set()
        if kept:
            log.info("kafka: %s given back: their state is kept and read from the engine's offsets on",
                     sorted(f"{t}/{p}" for t, p in kept))
        # the engine's offsets, not the group's committed ones: a partition
        # parked here resumes where its state is; one whose keys this node
        # dropped (or never held) has none, and is replayed from its start
        # into empty state
        consumer.assign(self._positioned(parts))
        self.assigned = new
        self.rebalances += 1
        self._handoffs += 1
        try:
            self.member_id = consumer.memberid() or None
        except (KafkaException, RuntimeError):
            self.member_id = None
        now = time.monotonic()
        for tp in parts:
            self.progress.assign(f"{tp.topic}/{tp.partition}", self._high_watermark(tp), now)
        self._learn_partition_counts()
        self._sync_hidden()
        if self.membership is not None:
            self.membership.claim(self.assigned, self.member_id)
        log.info("kafka: assigned %s", sorted(self.assigned))

    def _on_revoke(self, consumer, parts) -> None:
        # another member may own these partitions next: stop serving their
        # keys now (never a stale PRESENT), then tell the group where we are.
        # The eager protocols revoke every partition at every rebalance and
        # most come back: their state is parked (hidden, kept with its
        # offsets) until the assignment says which
        self._handoffs += 1  # (a batch read across it is not applied: poll_once)
        self._let_go(parts, "revoked")
        if parts:
            self._commit(asynchronous=False)
        self._unassign(consumer)

    def _on_lost(self, consumer, parts) -> None:
        # the group gave them to someone else already (our session timed out)
        self._handoffs += 1
        self._let_go(parts, "lost")
        self._unassign(consumer)

    def _let_go(self, parts, why: str) -> None:
        """Partitions this node no longer owns: parked, or dropped when the node
        stops and a restart could not resume them (no partition tags kept)."""
        if self._stop.is_set() and self.engine.row_partitions is None:
            self._drop_partitions(parts, why)
        else:
            self._park(parts, why)

    def _park(self, parts, why: str) -> None:
        """Hides the keys of these partitions from readers at once (NOT_FOUND,
        never a stale PRESENT) and keeps their state and offsets, in one hold
        of the engine lock, until the next assignment: one that gives them
        back resumes them from the engine's offsets (recovering, so still
        hidden, until caught up); otherwise they are dropped then."""
        mine = {(tp.topic, tp.partition) for tp in parts if tp.topic in self.topics}
        if not mine:
            return
        started = time.monotonic()
        n = 0
        with self.engine.lock:
            for topic in {t for t, _ in mine}:
                n += self.keys.hide(self._views_of(topic), {p for t, p in mine if t == topic})
            for t, p in mine:
                self.progress.revoke(f"{t}/{p}")
                self.lag.pop(f"{t}/{p}", None)
        self.parked |= mine
        self._sync_hidden()
        log.info("kafka: %s %s: parked %d key(s) (hidden) in %.1f ms", why, sorted(f"{t}/{p}" for t, p in mine),
                 n, (time.monotonic() - started) * 1e3)

    def _unassign(self, consumer) -> None:
        consumer.unassign()
        self.assigned = set()
        if self.membership is not None:
            self.membership.claim((), self.member_id)

    def _drop_partitions(self, parts, why: str, kept: set | None = None) -> None:
        """Deletes the keys of these partitions from every view of their
        topics (table rows and window state) and forgets their offsets, in
        one hold of the engine lock: they read NOT_FOUND from now on, and a
        later assignment replays them from the start (exactly once: the
        state and the offset that produced it go together)."""
        by_topic: dict[str, set[int]] = {}
        for tp in parts:
            if tp.topic in self.topics:
                by_topic.setdefault(tp.topic, set()).add(tp.partition)
        if not by_topic:
            return
        started = time.monotonic()
        n = 0
        with self.engine.lock:
            for topic, ps in by_topic.items():
                if {p for t, p in (self.assigned if kept is None else kept) if t == topic} <= ps:
                    # none of the topic's partitions stays (always so with the eager
                    # protocols): every key goes, the views start afresh
                    n += self.keys.forget(self._views_of(topic))
                else:
                    n += self.keys.drop(self._views_of(topic), ps)
                # their lateness starts afresh too: a later assignment replays them
                # from the start, which their old watermark would judge late
                self._forget_watermarks(topic, ps)
                for p in ps:
                    self.engine.offsets.pop(f"{topic}/{p}", None)
                    self.progress.revoke(f"{topic}/{p}")
                    self.lag.pop(f"{topic}/{p}", None)
                    self._committed.pop((topic, p), None)
        self._sync_hidden()
        self.dropped_keys += n
        log.info("kafka: %s %s: dropped %d key(s) in %.1f ms", why,
                 sorted(f"{t}/{p}" for t, ps in by_topic.items() for p in ps), n, (time.monotonic() - started) * 1e3)

    def _park_recovered(self) -> None:
        """Group mode, at start, with every recovered row's partition known
        (the engine tracks them: `fstore serve`): the partitions the engine
        holds offsets for are parked (their keys hidden, their state kept),
        so that the first assignment resumes those it gives this node from the
        engine's offsets and drops the others; keys of no known partition go."""
        n = 0
        parked = set()
        with self.engine.lock:
            for topic in self.topics:
                views = self._views_of(topic)
                n += self.keys.drop(views, {NO_PARTITION})
                held = {int(k.rpartition("/")[2]) for k in self.engine.offsets if k.rpartition("/")[0] == topic}
                self.keys.hide(views, held)
                parked |= {(topic, p) for p in held}
        self.parked |= parked
        self.dropped_keys += n
        self._sync_hidden()
        log.info("kafka: group mode start: %d partition(s) parked until the group assigns them (%s); %d key(s) of "
                 "no known partition dropped", len(parked), ", ".join(sorted(f"{t}/{p}" for t, p in parked)) or "-", n)

    def _forget_all(self) -> None:
        """Group mode, at start: the node owns no partition until the group
        assigns it some, and its recovered state may be older than what
        another member has served since: drop every key of the consumed
        streams' views and their topics' offsets (the assignment replays)."""
        n = 0
        with self.engine.lock:
            for topic in self.topics:
                n += self.keys.forget(self._views_of(topic))
                self._forget_watermarks(topic, None)
                for key in [k for k in self.engine.offsets if k.rpartition("/")[0] == topic]:
                    del self.engine.offsets[key]
        self.dropped_keys += n
        if self.engine.row_partitions is not None:
            self.engine.partitions_trusted = True  # nothing of the consumed streams is left untagged
        if n:
            log.info("kafka: group mode start: dropped %d recovered key(s); assigned partitions are replayed", n)

    def _forget_watermarks(self, topic: str, partitions: set[int] | None) -> None:
        """Under the engine lock: the lateness watermarks of these partitions
        of the topic (None: all of them) go, in the engine and in every window
        of the topic's views."""
        marks = [self.engine.watermarks.get(self.topics[topic], {})]
        marks += [w.part_watermarks for rt in self._views_of(topic) for w in rt.windows]
        for held in marks:
            for p in [p for p in held if p >= 0 and (partitions is None or p in partitions)]:
                del held[p]

    def _high_watermark(self, tp) -> int | None:
        try:
            _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5,
                                                          cached=False)
        except KafkaException as e:  # the first fetch response brings one (PartitionProgress.update)
            log.debug("kafka: high watermark of %s/%s: %s", tp.topic, tp.partition, e)
            return None
        return int(hi) if hi is not None and hi >= 0 else None

    def _learn_partition_counts(self) -> None:
        try:
            md = self.consumer.list_topics(timeout=5)
        except KafkaException:
            return
        for topic in self.topics:
            meta = md.topics.get(topic)
            if meta is not None and meta.error is None:
                self.partition_counts[topic] = len(meta.partitions)

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
            now = time.monotonic()
            for tp in new:
                self.progress.assign(f"{tp.topic}/{tp.partition}", self._high_watermark(tp), now)
                self.partition_counts[tp.topic] = len(md.topics[tp.topic].partitions)
            log.info("kafka: assigned %s", sorted((tp.topic, tp.partition) for tp in new))

    def _subscribe(self) -> None:
        if self.config.assign == "group":
            if self.engine.row_partitions is not None and self.engine.partitions_trusted:
                self._park_recovered()
            else:
                self._forget_all()
            self.consumer.subscribe(sorted(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_lost)
        else:
            self._refresh_assignment()
            self._next_refresh = time.monotonic() + self.config.metadata_refresh_s

    def _rewind(self) -> None:
        """After a failed batch: read again from what the engine holds."""
        self._drop_ahead()
        for topic, partition in sorted(self.assigned):
            try:
                self.consumer.seek(TopicPartition(topic, partition, self._start_offset(topic, partition)))
            except KafkaException as e:  # not fetching yet: the assignment's offset applies anyway
                log.debug("kafka: seek %s/%s: %s", topic, partition, e)

    # ---- the loop

    def start(self) -> "KafkaIngest":
        if self.membership is not None:
            self.membership.start()
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
        # backpressure: REST pushes arrived since the last batch → smaller batches
        # (shorter engine-lock holds) and a pause after each (below)
        fg = self.engine.foreground_pushes
        shared = fg != self._seen_foreground  # (since the last batch applied)
        limit = min(self.config.batch_size, self.config.shared_batch_size) if shared else self.config.batch_size
        if self.native and self.group:
            # the group's callbacks (kafka_native): before the batch is read, so
            # it is read from the assignment they leave. A batch read ahead
            # before an assignment (which sought every partition back to the
            # engine's offsets: applied, it would count twice), a revoke or a
            # loss is dropped and read again
            handoffs = self._handoffs
            self.consumer.serve()
            if self._handoffs != handoffs and self._ahead is not None:
                self._ahead = None
                self.rereads += 1
        handoffs = self._handoffs
        keep = self._keep_left > 0 or not self._lean
        if shared and self._ahead and _messages(self._ahead) > limit:
            # read ahead before REST pushes arrived, bigger than a shared batch: read again in
            # shared batches from the engine's offsets (backpressure now, not a batch later)
            self.rereads += 1
            self._rewind()
        by_topic, self._ahead = self._ahead, None
        started = time.monotonic()
        if by_topic is None:
            by_topic = self._take(limit, keep)
            started = time.monotonic()
            if by_topic:
                self._keep_left -= self._keep_left > 0
                # decoded now when the next batch is read meanwhile (its thread decodes too)
                by_topic = (self._decoded(by_topic) if self._reads_ahead(shared, keep) else
                            {t: (b, None) for t, b in by_topic.items()})
        if self._handoffs != handoffs and by_topic:
            # partitions were assigned, revoked or lost while the batch was read
            # (through consume(), callbacks run inside poll and consume): an
            # assignment moved positions to the engine's offsets, so the batch
            # may hold messages twice. None of it is applied; it is read again
            # from the engine's offsets
            log.info("kafka: a rebalance during a batch: reading it again")
            by_topic = {}
            self.rereads += 1
            self._rewind()
        # (a full batch: more is waiting. A batch that took what there was reads the next
        # after it is applied: read ahead, an event would wait for two batches, not one)
        if by_topic and self._reads_ahead(shared, keep) and _messages(by_topic) >= limit \
                and all(dec is not None for t, (_, dec) in by_topic.items() if t in self.topics):
            self._reading = self._reader.submit(self._read, limit)
        n = 0
        try:
            for topic, (batch, dec) in by_topic.items():
                if topic in self.topics:
                    n += self._ingest(topic, batch, dec)
        except _NeedMessages:
            # nothing of the batch that needed them was applied: read it again
            # from the engine's offsets with its messages, and so the next
            # 1, 2, 4 ... 64 batches (a topic with many bad messages pays one
            # second reading in 64 batches)
            self.rereads += 1
            self._keep_left, self._keep_next = self._keep_next, min(self._keep_next * 2, 64)
            self._rewind()
        except BaseException:
            self._drop_ahead()  # the caller reads again from the engine's offsets (_run: _rewind)
            raise
        else:
            if by_topic and not keep:
                self._keep_next = 1
        if by_topic:
            self._seen_foreground = fg
        self._join_ahead()  # (a failure of the read-ahead raises here: the caller reads again, as above)
        if n:
            # the group's committed offsets are for monitoring only (the
            # engine's own, in its WAL, are where it resumes): at most a few
            # a second, not one commit request per batch (~150/s at a steady
            # 10k events/s); a revoke and stop commit where the engine is
            if now >= self._next_commit:
                self._commit(asynchronous=True)
                self._next_commit = now + COMMIT_EVERY_S
            if shared and self.config.max_share < 1:
                pause = (time.monotonic() - started) * (1 - self.config.max_share) / self.config.max_share
                self.paused_s += pause
                self._stop.wait(pause)
        if now >= self._next_lag:
            self._update_lag()
            self._next_lag = now + 1.0
        if self.membership is not None:
            self.membership.tick()
        self._update_progress()
        return n

    # ---- reading ahead

    def _reads_ahead(self, shared: bool, keep: bool) -> bool:
        """Whether the next batch may be read while this one is applied
        (when this one is full: catching up): not in group mode through
        consume() (the group's rebalance callbacks run inside the consumer's
        calls and change what this thread applies; through the fetcher they
        run in `serve()`, between batches, and drop a batch read ahead of
        them), not while REST pushes share the engine (backpressure: those
        batches are small and paced), nor while batches keep their messages
        (after a bad message)."""
        return self._reader is not None and not shared and not keep

    def _decoded(self, by_topic: dict) -> dict:
        """{topic: (batch, decoded)}: each topic's batch decoded as
        `_ingest_part` would (table, the message of each row, dead letters,
        whether a column mixes JSON types), or None where it cannot be
        ahead of the engine: a batch holding events the offline log has
        already (a replay, `_again`), or one whose decoding needs the
        messages a lean batch dropped."""
        out = {}
        for topic, batch in by_topic.items():
            dec = None
            if topic in self.topics and not self._again(topic, batch).any():
                decoder = self.decoders[topic]
                try:
                    table, row_msgs, bad = decoder.decode(batch.msgs, batch.values)
                except _NeedMessages:
                    pass  # decoded again when applied: it raises there, and the batch is read again
                else:
                    dec = (table, row_msgs, bad, decoder.mixed, self._prepared(topic, table, decoder.mixed))
            out[topic] = (batch, dec)
        return out

    def _prepared(self, topic: str, table, mixed: bool):
        """A decoded batch prepared for the engine (Engine.prepare changes no
        state: the read-ahead thread prepares while the engine applies the
        last batch), or None where the push prepares it: nothing to
        prepare, or a batch it refuses (the push raises that again, and the
        batch is split)."""
        if table is None or not table.num_rows or mixed:
            return None
        try:
            return self.engine.prepare(self.topics[topic], table)
        except Exception:  # noqa: BLE001 - the push raises it again, where it is handled
            return None

    def _read(self, limit: int) -> dict:
        """The read-ahead, in its own thread while the engine applies the
        last batch: the next batch, consumed lean and decoded ({} when
        nothing came within the poll timeout)."""
        return self._decoded(self._take(limit, False))

    def _join_ahead(self) -> None:
        """Waits for the read-ahead; keeps what it read for the next batch
        (raises what it raised)."""
        reading, self._reading = self._reading, None
        if reading is not None:
            self._ahead = reading.result() or None

    def _drop_ahead(self) -> None:
        """Waits for the read-ahead and forgets what it read (the consumer
        is then sought back to the engine's offsets)."""
        reading, self._reading, self._ahead = self._reading, None, None
        if reading is not None:
            try:
                reading.result()
            except Exception as e:  # noqa: BLE001 - what it read is dropped anyway
                log.debug("kafka: the read-ahead failed (%s); reading again", e)

    def _take(self, limit: int, keep: bool) -> dict:
        """The next batch ({topic: _Polled}; {} when nothing came within the
        poll timeout): wait for the first message only, then take what is
        already fetched (consume(n, timeout) would wait for n messages or the
        timeout, and hold a lone event back for the whole poll timeout)."""
        timeout_s = self.config.poll_timeout_ms / 1000
        if self.native and not keep:
            # PERF: values, partitions and offsets straight from librdkafka's
            # messages (fscore.kafkafetch): ~0.1 µs a message against ~0.3
            # for consume()'s Message objects and the scan
            values, parts, offs, names = self.consumer.read_lean(timeout_s, limit, len(self.topics) > 1)
            return self._split(None, values, parts, offs, names)
        first = self.consumer.poll(timeout_s)
        return {} if first is None else self._consume(first, limit, keep)

    def _consume(self, first, limit: int, keep: bool) -> dict:
        """`first` and what is already fetched after it, up to `limit`
        messages: {topic: _Polled}. Lean (`keep` False): a chunk of
        CONSUME_CHUNK at a time, its Message objects dropped once scanned;
        else in one call, the messages kept."""
        many = len(self.topics) > 1
        size = limit if keep else min(limit, CONSUME_CHUNK)
        chunks = []
        msgs = self.consumer.consume(size - 1, 0) if size > 1 else []
        full = len(msgs) == size - 1
        msgs.insert(0, first)
        got = len(msgs)
        while True:
            # PERF: one C pass takes each message's value, partition and offset and
            # finds the errors (three Python passes cost ~1 µs an event)
            values, parts, offs, errors, names = jsonrows.scan(msgs, many)
            for i in errors:
                kafka_native.raise_or_log(msgs[i].error())
            if errors:
                keep_ix = np.flatnonzero(parts >= 0)
                ix = keep_ix.tolist()
                values = [values[i] for i in ix]
                msgs = [msgs[i] for i in ix] if keep else msgs
                names = None if names is None else [names[i] for i in ix]
                parts, offs = parts[keep_ix], offs[keep_ix]
            chunks.append((msgs if keep else None, values, parts, offs, names))
            if not full or got >= limit:  # nothing more is fetched yet, or the batch is full
                break
            want = min(limit - got, size)
            msgs = self.consumer.consume(want, 0)
            if not msgs:
                break
            full = len(msgs) == want
            got += len(msgs)
        del msgs
        if len(chunks) == 1:
            kept, values, parts, offs, names = chunks[0]
        else:
            kept = [m for c in chunks for m in c[0]] if keep else None
            values = [v for c in chunks for v in c[1]]
            parts, offs = np.concatenate([c[2] for c in chunks]), np.concatenate([c[3] for c in chunks])
            names = [t for c in chunks for t in c[4]] if many else None
        return self._split(kept if keep else None, values, parts, offs, names)

    def _split(self, kept: list | None, values: list, parts: np.ndarray, offs: np.ndarray,
               names: list | None) -> dict:
        """A batch read → {topic: _Polled} (`kept`: its messages, None when
        read lean; `names`: each message's topic, None for one topic)."""
        if not values:
            return {}
        whole = _Polled(_Dropped(len(values)) if kept is None else kept, values, parts, offs)
        if names is None:  # a subscription to one topic delivers only it
            return {next(iter(self.topics)): whole}
        idx: dict[str, list] = {}
        for i, t in enumerate(names):
            idx.setdefault(t, []).append(i)
        return {t: whole.take(np.asarray(ix, dtype=np.int64)) for t, ix in idx.items()}

    def _update_progress(self) -> None:
        """recovering → live for partitions caught up (PERF: only the ones not
        live yet, every 200 ms at most: a high watermark costs ~1.5 ms a call)."""
        pending = [k for k in self.progress.target if k not in self.progress.live]
        if not pending:
            return
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + 0.2
        for key in pending:
            topic, _, p = key.rpartition("/")
            try:
                _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(topic, int(p)), cached=True)
            except KafkaException:
                hi = None
            self.progress.update(key, self.engine.offsets.get(key), hi if hi is not None and hi >= 0 else None, now)
        if any(key in self.progress.live for key in pending):
            self._sync_hidden()

    def _sync_hidden(self) -> None:
        """Group mode: the keys of a recovering partition are hidden from
        readers (NOT_FOUND, not the partial values of its replay) until it is
        live; shows those of the partitions that just caught up."""
        if not self.group:
            return
        recovering: dict[str, set[int]] = {t: set() for t in self.topics}
        for k in self.progress.target:
            if k not in self.progress.live:
                topic, _, p = k.rpartition("/")
                recovering.setdefault(topic, set()).add(int(p))
        for topic, p in self.parked:  # hidden until the assignment says whose they are
            recovering.setdefault(topic, set()).add(p)
        views = {t: self._views_of(t) for t in self.topics}
        caught_up = {t: self._recovering.get(t, set()) - recovering[t] for t in self.topics}
        self._recovering = recovering
        self.keys.set_recovering({rt: recovering[t] for t in self.topics for rt in views[t]})
        if any(caught_up.values()):
            with self.engine.lock:
                shown = sum(self.keys.reveal(views[t], ps) for t, ps in caught_up.items() if ps)
            log.info("kafka: partition(s) %s caught up: %d key(s) readable",
                     sorted(f"{t}/{p}" for t, ps in caught_up.items() for p in ps), shown)

    def _again(self, topic: str, batch: "_Polled") -> np.ndarray:
        """Per message: whether this node's offline log (or dead letters)
        holds it already (a group-mode replay, a restart)."""
        present = _partitions(batch.parts)
        if not present.size:
            return np.zeros(0, dtype=bool)
        logged = self.engine.logged_offsets
        held = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        for p in present.tolist():
            held[p] = logged.get(f"{topic}/{p}", 0)
        return batch.offs < held[batch.parts]

    def _ingest(self, topic: str, batch: "_Polled | list", decoded: tuple | None = None) -> int:
        """`decoded`: the batch decoded already (`_decoded`), none of it a replay."""
        # librdkafka hands a partition's messages over in offset order: the
        # last one of each partition is the next offset to read
        if isinstance(batch, list):
            batch = _Polled.of(batch)
        msgs = batch.msgs
        again = self._again(topic, batch)
        if decoded is not None and not again.any():
            return self._ingest_part(topic, batch, replay=False, decoded=decoded)
        if decoded is not None:  # (the engine's offsets never move back: not reached)
            self._join_ahead()  # this thread decodes it: the read-ahead's must be done
        if again.any():
            # a replay (group mode: a partition assigned again, a restart):
            # events this node's offline log (or dead letters) holds already
            # are applied online only; the partition's later ones as usual
            if again.all():
                return self._ingest_part(topic, batch, replay=True)
            self._ingest_part(topic, batch.take(np.flatnonzero(again)), replay=True)
            self._ingest_part(topic, batch.take(np.flatnonzero(~again)), replay=False)
            return len(msgs)
        return self._ingest_part(topic, batch, replay=False)

    def _ingest_part(self, topic: str, batch: "_Polled", *, replay: bool, decoded: tuple | None = None) -> int:
        stream = self.topics[topic]
        msgs, parts = batch.msgs, batch.parts
        offsets = _next_offsets(topic, parts, batch.offs)
        prepared = None
        if decoded is None:
            table, row_msgs, bad = self.decoders[topic].decode(msgs, batch.values)
            mixed = self.decoders[topic].mixed
        else:
            table, row_msgs, bad, mixed, prepared = decoded
        # a replay's bad messages were dead-lettered when first consumed
        dead = [] if replay else [self._letter(m, stream, kind, reason) for m, kind, reason in bad]
        ingested = 0
        # each row's partition goes with it: lateness is judged per partition, and
        # in group mode a revoke knows its keys
        tags = None
        if table is not None:
            tags = parts if row_msgs is msgs else np.array([m.partition() for m in row_msgs], dtype=np.int64)
        if table is not None and table.num_rows:
            if dead:
                self._send_dead(dead)
                dead = []
            try:
                if mixed:
                    # values of several JSON types in a column: the engine judges each type
                    # in a part of its own (as it would each message alone), never as text
                    raise BatchError("a column mixes JSON types")
                self.engine.push(stream, table, offsets=offsets, tags=tags, offline=not replay, prepared=prepared)
                ingested = table.num_rows
            except ROW_ERRORS:
                self._join_ahead()  # the bisection below uses the decoder: the read-ahead's must be done
                if isinstance(row_msgs, _Dropped):
                    raise _NeedMessages() from None  # the bisection reads each message again
                runs, refused, rows = self._split_refused(topic, row_msgs)
                if not replay:
                    dead += [self._letter(row_msgs[i], stream, kind, reason) for i, kind, reason in refused]
                self._send_dead(dead)
                dead = []
                ingested = self._push_runs(topic, runs, rows, row_msgs, offsets, tags, replay)
        if dead or not ingested:
            self._send_dead(dead)
            self.engine.advance_offsets(offsets)
        self._count("consumed", topic, len(msgs))
        self._count("ingested", topic, ingested)
        return len(msgs)

    def _split_refused(self, topic: str, row_msgs: list) -> tuple[list, list, list]:
        """Bisects a batch the engine refused: ([[(lo, hi, table), ...] for
        each run of good rows between refused ones], [(row, kind, reason)],
        each message's row as decoded on its own (None: malformed)).
        Each part is decoded again from its own messages: in the batch's
        table a column whose JSON types mix is text, which a strict column
        (an entity key) refuses for every row, not only the odd one."""
        stream, decoder = self.topics[topic], self.decoders[topic]
        rows: list = []
        refused: list = []
        for i, m in enumerate(row_msgs):
            try:
                rows.append(decoder.row(m))
            except Malformed as e:  # the batch reader took what the per-message rules do not
                rows.append(None)
                refused.append((i, e.kind, str(e)))
        good: list = []

        def search(lo: int, hi: int) -> None:
            part = [r for r in rows[lo:hi] if r is not None]
            if not part:
                return
            if len(part) == hi - lo:
                table = decoder.table(part)
                try:
                    if decoder.mixed:
                        raise BatchError("a column mixes JSON types")  # split: each type judged on its own
                    self.engine.validate(stream, table)
                    good.append((lo, hi, table))
                    return
                except ROW_ERRORS as e:
                    if hi - lo == 1:
                        refused.append((lo, "schema", str(e)))
                        return
            mid = (lo + hi) // 2
            search(lo, mid)
            search(mid, hi)

        search(0, len(rows))
        refused.sort()
        runs: list = []
        for piece in good:  # in row order
            if runs and runs[-1][-1][1] == piece[0]:
                runs[-1].append(piece)
            else:
                runs.append([piece])
        return runs, refused, rows

    def _push_runs(self, topic: str, runs: list, rows: list, row_msgs: list, offsets: dict,
                   tags: np.ndarray | None, replay: bool) -> int:
        """Pushes the good rows of a refused batch, in order: each run of
        them as one batch when its parts still go together, else part by
        part; the last push carries the batch's offsets, the others those of
        their own messages."""
        stream, decoder = self.topics[topic], self.decoders[topic]
        n = 0

        def push(lo: int, hi: int, table: pa.Table, last: bool) -> None:
            self.engine.push(stream, table, offsets=offsets if last else _offsets_of(row_msgs[lo:hi]),
                             tags=None if tags is None else tags[lo:hi], offline=not replay)

        for j, run in enumerate(runs):
            lo, hi = run[0][0], run[-1][1]
            last = j == len(runs) - 1
            try:
                if len(run) > 1:
                    whole = decoder.table(rows[lo:hi])
                    if not decoder.mixed:
                        push(lo, hi, whole, last)
                        n += hi - lo
                        continue
            except ROW_ERRORS:  # refused before it was logged: the parts, each validated on its own
                pass
            for k, (a, b, table) in enumerate(run):
                push(a, b, table, last and k == len(run) - 1)
                n += b - a
        return n

    def _letter(self, m, stream: str, kind: str, reason: str) -> DeadLetter:
        return DeadLetter(m.value(), m.key(), m.topic(), m.partition(), m.offset(), stream, kind, reason)

    def _send_dead(self, letters: list[DeadLetter]) -> None:
        """Sends dead letters, each once: a batch read again after a failure
        (an engine push that failed, not the message's fault) holds the
        ones sent before it (they were sent twice; a crash between sending
        and the push still sends them again: the offsets that skip them are
        in the push)."""
        sent = self._dead_sent
        if sent:  # forget those the engine's offsets have passed, and those of partitions let go
            offsets = self.engine.offsets
            for c in [c for c in sent if c[2] < offsets.get(f"{c[0]}/{c[1]}", 0) or (c[0], c[1]) not in self.assigned]:
                sent.discard(c)
        letters = [d for d in letters if (d.topic, d.partition, d.offset) not in sent]
        if not letters:
            return
        for d in letters:
            self.dead_letters.send(d)
        self.dead_letters.flush()  # before the offsets that skip them become durable
        sent.update((d.topic, d.partition, d.offset) for d in letters)
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
                "reader": "librdkafka" if self.native else "consume()",
                "consumed": dict(self.counts["consumed"]), "ingested": dict(self.counts["ingested"]),
                "dead_lettered": dict(self.counts["dead_lettered"]),
                "dead_lettered_by_kind": {f"{t}:{k}": n for (t, k), n in self.dead_by_kind.items()},
                "lag": dict(self.lag), "assigned": sorted(f"{t}/{p}" for t, p in self.assigned),
                "errors": self.errors, "last_error": self.last_error, "paused_s": round(self.paused_s, 3),
                "rereads": self.rereads,
                "running": self._thread is not None and self._thread.is_alive(),
                "recovering": sorted(k for k in self.progress.target if k not in self.progress.live),
                "dropped_keys": self.dropped_keys, "rebalances": self.rebalances,
                "parked": sorted(f"{t}/{p}" for t, p in self.parked),
                "split_views": dict(self.keys.split)}

    def cluster(self) -> dict:
        """This node's share of the topics (GET /api/v1/cluster). Reads only
        what the ingest thread keeps: the consumer is not called from other
        threads (a call beside its poll() can deadlock)."""
        members = self.membership.members() if self.membership is not None else None
        partitions = []
        for topic, p in sorted(self.assigned):
            key = f"{topic}/{p}"
            partitions.append({"topic": topic, "partition": p, "state": self.progress.state(key),
                               "offset": self.engine.offsets.get(key), "lag": self.lag.get(key),
                               "recovered_s": (round(self.progress.recovered_s[key], 3)
                                               if key in self.progress.recovered_s else None)})
        return {"node": self.node, "mode": self.config.assign,
                "group_id": self.config.group_id if self.group else None, "member_id": self.member_id,
                "url": self.url, "peer": self.peer,
                "topics": {t: {"stream": s, "partitions": self.partition_counts.get(t),
                               "key": self.topic_keys.get(t)}
                           for t, s in sorted(self.topics.items())},
                "partitions": partitions,
                # revoked (or recovered at start) and kept, hidden, until the next assignment
                "parked": sorted(f"{t}/{p}" for t, p in self.parked),
                # every node's claim, from the members topic (fsapp.engine.members); None without one
                "members": members,
                "owners": self._owners(),
                "partitioner": "murmur2",
                "split_views": dict(self.keys.split)}

    def _owners(self) -> dict | None:
        """{topic: {partition: owner URL}} by the members' claims."""
        if self.membership is None:
            return None
        out: dict = {}
        for (topic, p), url in sorted(self.membership.owners().items()):
            out.setdefault(topic, {})[str(p)] = url
        return out

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): the ingest thread is alive, and the lag is within
        `ready_max_lag` when that is set."""
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return False, f"Kafka ingestion stopped ({self.last_error or 'the thread exited'}); restart the server"
        if self.keys.split:  # first: a definition to fix, not a wait
            views = ", ".join(sorted(self.keys.split))
            return False, (f"feature view(s) {views} get events for one key from several partitions: in "
                           "kafka.assign: group each node holds partial values of them (see docs/kafka.md, scale-out)")
        recovering = sorted(k for k in self.progress.target if k not in self.progress.live)
        if self.group and recovering:
            return False, (f"rebuilding Kafka partition(s) {', '.join(recovering[:5])}: their keys' values are not "
                           "caught up yet (GET /api/v1/cluster shows the state of each partition)")
        limit = self.config.ready_max_lag
        total = sum(self.lag.values())
        if limit is not None and total > limit:
            worst = sorted(self.lag.items(), key=lambda kv: -kv[1])[:3]
            return False, (f"catching up on Kafka: {total} messages behind (kafka.ready_max_lag is {limit}; "
                           f"most behind: {', '.join(f'{k} {v}' for k, v in worst)})")
        return True, ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finishes the current batch, commits, closes the consumer (a group
        member leaves the group: its revoke checkpoints)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._closed:
            return
        self._closed = True
        self._drop_ahead()  # read, not applied: the engine's offsets say where a start resumes
        if self._reader is not None:
            self._reader.shutdown(wait=True)
        self._commit(asynchronous=False)
        try:
            self.consumer.close()
            if self.membership is not None:
                self.membership.stop()
        finally:
            self.dead_letters.close()
            self.engine.sources.pop("kafka", None)
