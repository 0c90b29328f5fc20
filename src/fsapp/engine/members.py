"""Who owns which partition, for every node of a group (`kafka.assign:
group`), published on Kafka itself.

Kafka's consumer API tells a member its own assignment only (and tansu's
DescribeGroups answers nothing), so each node publishes its own to a
one-partition topic (`kafka.members_topic`, default
`fstore.members.<group_id>`): a JSON record keyed by its URL,

    {"url": "http://10.0.0.1:9094", "peer": "http://10.0.0.1:41234",
     "member_id": "...", "at": <ms>, "partitions": [["payments", 0], ...],
     "leaving": false}

at every assignment and revoke and every `PUBLISH_S` seconds, and reads
everyone's from the start of the topic. A record older than `stale_s` (a
node that died without a word) owns nothing; a partition claimed by two
fresh records (a rebalance in flight) goes to the newer claim. A node that
stops publishes `leaving`. This is what `GET /api/v1/cluster` lists as
`members`, and what a node asked for another node's keys forwards the read
by (fsapp.api.forwarding), to the owner's `peer` URL (fsapp.serve.peer).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("fstore.kafka")

PUBLISH_S = 2.0
# records read back at start: covers stale_s (15 s) of claims for up to ~260 nodes
RECENT = 2000


def members_topic(group_id: str) -> str:
    return f"fstore.members.{group_id}"


def node_url(node: str | None) -> str | None:
    """`fstore serve`'s host:port as a URL other nodes can reach (the
    machine's name for a wildcard host); None without one."""
    if not node:
        return None
    host, _, port = node.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    return f"http://{host}:{port}"


class Membership:
    """This node's claim, and everyone's, on the members topic."""

    def __init__(self, client_properties: dict, topic: str, url: str, *, peer: str | None = None,
                 stale_s: float = 15.0, clock=time.time):
        self.topic, self.url, self.peer, self.stale_s, self.clock = topic, url, peer, stale_s, clock
        self._props = {k: v for k, v in client_properties.items()
                       if k in ("bootstrap.servers",) or k.startswith(("security.", "sasl.", "ssl."))}
        self.records: dict[str, dict] = {}  # url -> its last record
        self.lock = threading.Lock()
        self._claim: dict = {"partitions": [], "member_id": None}
        self._next_publish = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None

    def start(self) -> "Membership":
        try:
            self._create_topic()
        except KafkaException as e:
            log.error("kafka: the members topic %s could not be created (%s): this node will not learn the other "
                      "nodes' partitions, so reads of their keys are not forwarded. Create it (1 partition, "
                      "cleanup.policy=compact) or allow this client to create topics", self.topic, e)
        self.producer = Producer({**self._props, "linger.ms": 0})
        self.consumer = Consumer({**self._props, "group.id": f"{self.topic}.reader", "enable.auto.commit": False,
                                  "enable.partition.eof": False})
        self.consumer.assign([TopicPartition(self.topic, 0, self._first_offset())])
        self._thread = threading.Thread(target=self._read, name="fstore-members", daemon=True)
        self._thread.start()
        return self

    def _create_topic(self) -> None:
        admin = AdminClient(self._props)
        # compacted, and deleted after an hour: only the claims of the last stale_s count
        new = NewTopic(self.topic, num_partitions=1, replication_factor=-1,
                       config={"cleanup.policy": "compact,delete", "retention.ms": "3600000"})
        try:
            admin.create_topics([new])[self.topic].result(30)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise

    def _first_offset(self) -> int:
        """Where reading starts: the last RECENT records hold every fresh
        claim (each live node republishes every PUBLISH_S; older claims are
        stale anyway), so a long-lived topic is not read from its start."""
        try:
            lo, hi = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=10)
        except KafkaException:
            return OFFSET_BEGINNING
        if hi is None or hi < 0:
            return OFFSET_BEGINNING
        return max(lo, hi - RECENT)

    # ---- this node's claim

    def claim(self, partitions, member_id: str | None) -> None:
        """Publishes that this node now owns `partitions` ([(topic, p)])."""
        self._claim = {"partitions": sorted([t, int(p)] for t, p in partitions), "member_id": member_id}
        self._publish(leaving=False)

    def tick(self) -> None:
        """Republishes the claim every PUBLISH_S (the ingest thread calls it)."""
        if time.monotonic() >= self._next_publish:
            self._publish(leaving=False)

    def _publish(self, *, leaving: bool) -> None:
        if self.producer is None:
            return
        rec = {"url": self.url, "peer": self.peer, "at": int(self.clock() * 1000), "leaving": leaving,
               "partitions": [] if leaving else self._claim["partitions"], "member_id": self._claim["member_id"]}
        self._note(rec)  # our own view does not wait for the round trip
        try:
            self.producer.produce(self.topic, json.dumps(rec).encode(), key=self.url.encode())
            self.producer.poll(0)
        except (KafkaException, BufferError) as e:
            log.warning("kafka: publishing this node's partitions to %s failed: %s", self.topic, e)
        self._next_publish = time.monotonic() + PUBLISH_S

    # ---- everyone's

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.consumer.poll(0.2)
            except (KafkaException, RuntimeError):
                if self._stop.is_set():
                    return
                time.sleep(0.5)
                continue
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            try:
                rec = json.loads(msg.value())
                if isinstance(rec, dict) and isinstance(rec.get("url"), str):
                    self._note(rec)
            except ValueError:
                log.warning("kafka: %s holds a record that is not JSON; ignored", self.topic)

    def _note(self, rec: dict) -> None:
        with self.lock:
            old = self.records.get(rec["url"])
            if old is None or rec.get("at", 0) >= old.get("at", 0):
                self.records[rec["url"]] = rec

    def owners(self) -> dict[tuple[str, int], str]:
        """(topic, partition) -> the URL of the node that owns it, by the
        fresh claims (the newer claim of a partition claimed twice)."""
        now_ms = self.clock() * 1000
        best: dict[tuple[str, int], tuple[int, str]] = {}
        with self.lock:
            records = list(self.records.values())
        for rec in records:
            if rec.get("leaving") or now_ms - rec.get("at", 0) > self.stale_s * 1000:
                continue
            for t, p in rec.get("partitions") or []:
                key = (t, int(p))
                if key not in best or rec["at"] > best[key][0]:
                    best[key] = (rec["at"], rec["url"])
        return {k: url for k, (_, url) in best.items()}

    def members(self) -> list[dict]:
        """The nodes with a fresh claim: [{url, member_id, partitions, age_s}]."""
        now_ms = self.clock() * 1000
        with self.lock:
            records = sorted(self.records.values(), key=lambda r: r["url"])
        return [{"url": r["url"], "peer": r.get("peer"), "member_id": r.get("member_id"),
                 "partitions": r.get("partitions") or [],
                 "age_s": round(max(0.0, now_ms - r.get("at", 0)) / 1000, 3)}
                for r in records if not r.get("leaving") and now_ms - r.get("at", 0) <= self.stale_s * 1000]

    def stop(self) -> None:
        """Publishes that this node leaves, then stops reading."""
        self._publish(leaving=True)
        self._stop.set()
        if self.producer is not None:
            self.producer.flush(5)
        if self._thread is not None:
            self._thread.join(5)
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError):
                pass
