"""The `kafka:` section of fstore.yaml, checked, and the dead-letter sinks.

    kafka:
      bootstrap_servers: broker1:9092,broker2:9092
      group_id: fstore-myproject        # default fstore-<project>
      assign: all                       # all (default) | group
      batch_size: 20000                 # messages per engine batch, at most
      poll_timeout_ms: 100
      dead_letter_topic: bad-events     # default <topic>.dlq per source topic
      dead_letter_file: data/dead.jsonl # instead of a topic (relative to the repo)
      max_share: 0.5                    # while REST pushes arrive: at most this share of time on Kafka batches
      shared_batch_size: 500            # ... in batches of at most this many messages
      read_ahead: true                  # read the next batch while the engine applies one
      native_fetch: true                # read batches through librdkafka's C API (no Message objects)
      ready_max_lag: 100000             # /ready is 503 while the lag is above (default: never)
      avro_framing: confluent           # or raw (bare Avro bodies)
      avro_writer_schemas:              # Confluent schema id -> the producer's .avsc (schema evolution)
        '7': schemas/payment-v2.avsc  # ids quoted: YAML keys are names
      security.protocol: SASL_SSL       # any key with a dot: a librdkafka property
      properties:                       # ... or grouped here
        sasl.mechanism: PLAIN
"""
from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field

from fscore import kafkafetch

from fsapp.registry.errors import RepoError

ASSIGN_MODES = ("all", "group")
_KEYS = ("bootstrap_servers", "group_id", "assign", "batch_size", "poll_timeout_ms", "dead_letter_topic",
         "dead_letter_file", "properties", "metadata_refresh_s", "avro_framing", "avro_writer_schemas",
         "max_share", "shared_batch_size", "ready_max_lag", "members_topic", "advertised_url", "peer_port",
         "read_ahead", "native_fetch")
# set by fstore itself: the engine's offsets are the truth, not Kafka's
_RESERVED = ("enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers")
# librdkafka's consumer-only and producer-only properties (its CONFIGURATION.md, the "C/P"
# column): the user's `properties` go to the consumer and the dead-letter producer, and a
# client given the other side's prints a CONFWARN line to stderr at every start
CONSUMER_ONLY = frozenset((
    "group.id", "group.instance.id", "partition.assignment.strategy", "session.timeout.ms",
    "heartbeat.interval.ms", "group.protocol.type", "group.protocol", "group.remote.assignor",
    "coordinator.query.interval.ms", "max.poll.interval.ms", "max.poll.records", "enable.auto.commit",
    "auto.commit.enable", "auto.commit.interval.ms", "enable.auto.offset.store", "queued.min.messages",
    "queued.max.messages.kbytes", "fetch.wait.max.ms", "fetch.queue.backoff.ms", "fetch.message.max.bytes",
    "max.partition.fetch.bytes", "fetch.max.bytes", "fetch.min.bytes", "fetch.error.backoff.ms",
    "isolation.level", "enable.partition.eof", "check.crcs", "auto.offset.reset", "offset.store.method",
    "offset.store.path", "offset.store.sync.interval.ms", "consume.callback.max.messages",
    "share.acknowledgement.mode", "consume_cb", "rebalance_cb", "offset_commit_cb"))
PRODUCER_ONLY = frozenset((
    "transactional.id", "transaction.timeout.ms", "enable.idempotence", "enable.gapless.guarantee",
    "queue.buffering.max.messages", "queue.buffering.max.kbytes", "queue.buffering.max.ms", "linger.ms",
    "message.send.max.retries", "retries", "queue.buffering.backpressure.threshold", "compression.codec",
    "compression.type", "compression.level", "batch.num.messages", "batch.size", "delivery.report.only.error",
    "sticky.partitioning.linger.ms", "request.required.acks", "acks", "request.timeout.ms",
    "message.timeout.ms", "delivery.timeout.ms", "queuing.strategy", "produce.offset.report", "partitioner",
    "dr_cb", "dr_msg_cb", "partitioner_cb", "msg_order_cmp"))


@dataclass
class KafkaConfig:
    bootstrap_servers: str
    group_id: str
    assign: str = "all"
    batch_size: int = 20000
    poll_timeout_ms: int = 100
    dead_letter_topic: str | None = None
    dead_letter_file: str | None = None
    metadata_refresh_s: float = 10.0
    avro_framing: str = "confluent"  # or "raw": bare Avro bodies without the 5-byte header
    avro_writer_schemas: dict = field(default_factory=dict)  # Confluent schema id -> .avsc path (absolute)
    # backpressure: while REST pushes are arriving, batches are at most
    # shared_batch_size and the ingest thread pauses so that it applies
    # batches at most max_share of the time (1.0: never pauses)
    max_share: float = 0.5
    shared_batch_size: int = 500
    ready_max_lag: int | None = None  # /ready answers 503 while the lag is above this (None: lag never does)
    # consume and decode the next batch in a thread of its own while the engine
    # applies the last (fsapp.engine.kafka, KafkaIngest._read; not in group mode
    # without native_fetch)
    read_ahead: bool = True
    # batches are read through librdkafka's C API (fscore.kafkafetch), not one
    # confluent-kafka Message object a message (False: consume(), both modes)
    native_fetch: bool = True
    repo_root: str = "."  # Avro schema files are relative to it
    # group mode: where the nodes publish their partitions (fsapp.engine.members;
    # None: fstore.members.<group_id>), and the URL other nodes reach this one at
    # (None: http://<host>:<port> of `fstore serve`, the machine's name for 0.0.0.0)
    members_topic: str | None = None
    advertised_url: str | None = None
    peer_port: int = 0  # where other nodes' forwarded reads arrive (fsapp.serve.peer); 0: any free port
    properties: dict = field(default_factory=dict)

    @classmethod
    def from_repo(cls, repo) -> "KafkaConfig | None":
        """The repo's Kafka settings, or None when `kafka.bootstrap_servers`
        is not set (push-only)."""
        section = repo.config.get("kafka")
        if not section:
            return None
        def at(*keys: str) -> str:  # "<fstore.yaml> line N: kafka", N the line of the setting
            return f"{repo.config_where('kafka', *keys)}: kafka"

        if not isinstance(section, dict):
            raise RepoError(f"{at()}: expected a mapping (bootstrap_servers: ..., group_id: ...)")
        if not section.get("bootstrap_servers"):
            # a section without its brokers was ignored whole: a store that never consumed, silently
            hint = " (fstore's spelling of librdkafka's bootstrap.servers)" if "bootstrap.servers" in section else ""
            raise RepoError(f"{at('bootstrap_servers')}.bootstrap_servers is not set{hint}: give the brokers "
                            "(host:port,...), or remove the kafka section for a push-only store")
        props = {}
        for key, value in section.items():
            if "." in key:
                props[key] = value
            elif key not in _KEYS:
                raise RepoError(f"{at(key)}: unknown setting {key!r}; settings are {', '.join(_KEYS)}, "
                                "or a librdkafka property (a name with a dot, e.g. security.protocol)")
        extra = section.get("properties") or {}
        if not isinstance(extra, dict):
            raise RepoError(f"{at('properties')}.properties: expected a mapping of librdkafka properties")
        props.update(extra)
        for key in props:
            if key in _RESERVED:
                place = at(key) if key in section else at("properties", key)
                raise RepoError(f"{place}: {key} is set by fstore (offsets are kept by the engine); remove it")
        servers = section["bootstrap_servers"]
        if isinstance(servers, list) and servers and all(isinstance(s, str) and s.strip() for s in servers):
            servers = ",".join(s.strip() for s in servers)  # a YAML list of brokers: librdkafka's comma form
        if not isinstance(servers, str):  # str() of a list or a number was sent to librdkafka as is
            raise RepoError(f"{at('bootstrap_servers')}.bootstrap_servers: give the brokers as host:port, "
                            f"comma-separated or a YAML list, got {servers!r}")
        cfg = cls(bootstrap_servers=servers,
                  group_id=str(section.get("group_id") or f"fstore-{repo.project}"),
                  assign=str(section.get("assign") or "all"),
                  dead_letter_topic=section.get("dead_letter_topic"),
                  properties={k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in props.items()})
        for key, value in cfg.properties.items():
            # judged now, with the line to fix, not by a consumer's creation at every start of the engine
            reason = kafkafetch.check_property(key, value)
            if reason:
                place = at(key) if key in section else at("properties", key)
                raise RepoError(f"{place}: {key}: {reason} (librdkafka's CONFIGURATION.md lists the properties)")
        cfg.avro_framing = str(section.get("avro_framing") or "confluent")
        if cfg.avro_framing not in ("confluent", "raw"):
            raise RepoError(f"{at('avro_framing')}.avro_framing: {cfg.avro_framing!r} is not 'confluent' or 'raw'")
        cfg.repo_root = str(repo.root)
        writers = section.get("avro_writer_schemas") or {}
        if not isinstance(writers, dict):
            raise RepoError(f"{at('avro_writer_schemas')}.avro_writer_schemas: expected a mapping of Confluent "
                            "schema ids to .avsc files, e.g. {'7': schemas/payment-v2.avsc}")
        for sid, path in writers.items():
            if isinstance(sid, bool) or not isinstance(sid, int) and not str(sid).isdigit():
                raise RepoError(f"{at('avro_writer_schemas')}.avro_writer_schemas: {sid!r} is not a schema id "
                                "(a number, the 4 bytes after the magic byte)")
            if not isinstance(path, str) or not path:
                raise RepoError(f"{at('avro_writer_schemas')}.avro_writer_schemas.{sid}: expected a .avsc path")
            cfg.avro_writer_schemas[int(sid)] = str(repo.root / path)
        if cfg.assign not in ASSIGN_MODES:
            raise RepoError(f"{at('assign')}.assign: {cfg.assign!r} is not one of {', '.join(ASSIGN_MODES)}")
        share = section.get("max_share")
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                                  or not 0.05 <= share <= 1):
            raise RepoError(f"{at('max_share')}.max_share: expected a fraction in 0.05..1 (the share of time Kafka "
                            f"ingestion may take while REST pushes arrive), got {share!r}")
        if share is not None:
            cfg.max_share = float(share)
        for name, lo in (("batch_size", 1), ("poll_timeout_ms", 1), ("metadata_refresh_s", 0.1),
                         ("shared_batch_size", 1), ("ready_max_lag", 0)):
            if section.get(name) is not None:
                value = section[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
                    raise RepoError(f"{at(name)}.{name}: expected a number >= {lo}, got {value!r}")
                setattr(cfg, name, int(value) if name == "ready_max_lag" else type(getattr(cfg, name))(value))
        for name in ("read_ahead", "native_fetch"):
            flag = section.get(name)
            if flag is not None:
                if not isinstance(flag, bool):
                    raise RepoError(f"{at(name)}.{name}: expected true or false, got {flag!r}")
                setattr(cfg, name, flag)
        for name in ("members_topic", "advertised_url"):
            value = section.get(name)
            if value is not None:
                if not isinstance(value, str) or not value.strip():
                    raise RepoError(f"{at(name)}.{name}: expected a non-empty string, got {value!r}")
                setattr(cfg, name, value.strip())
        port = section.get("peer_port")
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise RepoError(f"{at('peer_port')}.peer_port: expected a TCP port (0..65535; 0: any free one), "
                                f"got {port!r}")
            cfg.peer_port = port
        if cfg.advertised_url and not cfg.advertised_url.startswith(("http://", "https://")):
            raise RepoError(f"{at('advertised_url')}.advertised_url: {cfg.advertised_url!r} is not an http(s) URL; "
                            "give the URL other nodes reach this one at, e.g. http://10.0.0.1:9094")
        if section.get("dead_letter_file"):
            if cfg.dead_letter_topic:
                raise RepoError(f"{at('dead_letter_file')}: set dead_letter_topic or dead_letter_file, not both")
            cfg.dead_letter_file = str(repo.root / str(section["dead_letter_file"]))
        return cfg

    def client_properties(self) -> dict:
        """librdkafka properties: the bootstrap servers and the user's."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.properties}

    def consumer_properties(self) -> dict:
        """client_properties without the producer-only ones."""
        return {k: v for k, v in self.client_properties().items() if k not in PRODUCER_ONLY}

    def producer_properties(self) -> dict:
        """client_properties without the consumer-only ones (the dead-letter producer)."""
        return {k: v for k, v in self.client_properties().items() if k not in CONSUMER_ONLY}


@dataclass
class DeadLetter:
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    stream: str
    kind: str     # json | not_object | schema | empty
    reason: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [("fstore.reason", self.reason.encode()), ("fstore.kind", self.kind.encode()),
                ("fstore.stream", self.stream.encode()), ("fstore.source.topic", self.topic.encode()),
                ("fstore.source.partition", str(self.partition).encode()),
                ("fstore.source.offset", str(self.offset).encode())]


class DeadLetterTopic:
    """Produces dead letters to `<topic>.dlq` (or one configured topic).
    `flush()` returns only once every letter is acknowledged by the broker:
    the consumed offsets advance after it, so a letter is never lost (a crash
    between the two re-sends it: dead letters are at-least-once)."""

    def __init__(self, config: KafkaConfig):
        from confluent_kafka import Producer

        self.topic = config.dead_letter_topic
        self.producer = Producer({**config.producer_properties(), "enable.idempotence": False, "linger.ms": 5})
        self.failed: list[str] = []

    def topic_for(self, source_topic: str) -> str:
        return self.topic or f"{source_topic}.dlq"

    def send(self, letter: DeadLetter) -> None:
        def on_delivery(err, _msg):
            if err is not None:
                self.failed.append(str(err))
        self.producer.produce(self.topic_for(letter.topic), letter.value, letter.key, headers=letter.headers(),
                              on_delivery=on_delivery)
        self.producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        left = self.producer.flush(timeout_s)
        if left or self.failed:
            errors, self.failed = self.failed, []
            raise RuntimeError(f"dead-letter topic: {left} letter(s) unsent after {timeout_s:.0f} s, "
                               f"errors: {errors[:3]}; check that the broker accepts writes to the .dlq topics "
                               "(or set kafka.dead_letter_file)")

    def close(self) -> None:
        self.producer.flush(10)


class DeadLetterFile:
    """Appends dead letters as JSON lines (value as UTF-8 text when it is,
    always base64 too) and fsyncs on flush, before the offsets advance."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def send(self, letter: DeadLetter) -> None:
        rec = {"stream": letter.stream, "topic": letter.topic, "partition": letter.partition, "offset": letter.offset,
               "kind": letter.kind, "reason": letter.reason,
               "key_b64": base64.b64encode(letter.key).decode() if letter.key is not None else None,
               "value_b64": base64.b64encode(letter.value).decode() if letter.value is not None else None}
        try:
            rec["value"] = letter.value.decode("utf-8") if letter.value is not None else None
        except UnicodeDecodeError:
            pass
        with self.lock:
            self.file.write(json.dumps(rec) + "\n")

    def flush(self, timeout_s: float = 30.0) -> None:
        with self.lock:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.flush()
        self.file.close()
