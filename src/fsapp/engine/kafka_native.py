"""The ingest's consumer: batches read through librdkafka's C API
(`fscore.kafkafetch.Fetcher`: each message's value, partition and offset,
no confluent-kafka Message object), and everything else through a
confluent-kafka Consumer that never fetches: topic metadata, and in group
mode the group itself (subscribe, rebalance callbacks, commits with the
group's generation; the partitions it is assigned are paused at once and
given to the fetcher). It answers the part of confluent-kafka's Consumer API
`fsapp.engine.kafka.KafkaIngest` calls, plus `read_lean` for a batch
without message objects and `serve` for the group's callbacks
(docs/kafka.md, "Reading batches")."""
from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaError, KafkaException

from fscore import kafkafetch

log = logging.getLogger("fstore.kafka")


def available() -> str | None:
    """None when the native fetcher can be used, else why not."""
    return None if kafkafetch.load() else kafkafetch.why()


def raise_or_log(err: KafkaError) -> None:
    """A consumer's error event: a fatal one raises, a partition's end is
    nothing, the others are logged."""
    if err.fatal():
        raise KafkaException(err)
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("kafka: %s", err)


def _kafka_error(e: kafkafetch.FetchError) -> KafkaException:
    return KafkaException(KafkaError(e.code, e.reason, fatal=e.fatal))


def _triples(tps) -> list:
    return [(tp.topic, tp.partition, tp.offset) for tp in tps]


class NativeConsumer:
    """One `Fetcher` for the assigned partitions' messages and one
    confluent-kafka Consumer for topic metadata and, in group mode, the
    group membership (its partitions paused: it never fetches them); the
    same properties for both."""

    def __init__(self, properties: dict):
        self.fetcher = kafkafetch.Fetcher(dict(properties))
        self.meta = Consumer(dict(properties))
        self.grouped = False

    # ---- group mode: membership through confluent-kafka, data through the fetcher

    def subscribe(self, topics: list, on_assign, on_revoke, on_lost) -> None:
        """Joins the group; the callbacks run inside `serve()` and get this
        consumer (their assign/unassign move the fetcher too)."""
        self.grouped = True
        self.meta.subscribe(topics, on_assign=lambda _c, parts: on_assign(self, parts),
                            on_revoke=lambda _c, parts: on_revoke(self, parts),
                            on_lost=lambda _c, parts: on_lost(self, parts))

    def serve(self) -> None:
        """Serves the group's events (heartbeats are librdkafka's own; the
        rebalance callbacks run here, in the calling thread). A message the
        membership consumer fetched before its partitions were paused is
        dropped: the fetcher reads them."""
        while True:
            msgs = self.meta.consume(1000, 0)
            for m in msgs:
                if m.error() is not None:
                    raise_or_log(m.error())
            if len(msgs) < 1000:
                return

    def memberid(self):
        return self.meta.memberid()

    def unassign(self) -> None:
        if self.grouped:
            self.meta.unassign()
        self._call(self.fetcher.assign, [])

    def _call(self, f, *args, **kwargs):
        try:
            return f(*args, **kwargs)
        except kafkafetch.FetchError as e:
            raise _kafka_error(e) from None

    # ---- reading

    def read_lean(self, timeout_s: float, limit: int, topics: bool):
        """Waits up to timeout_s for a message, then takes what is fetched,
        up to `limit`: (values as a kafkafetch.Packed, partitions, offsets,
        topics or None); error events are logged (a fatal one raises
        KafkaException)."""
        values, parts, offs, names, errors = self._call(self.fetcher.read_packed, int(timeout_s * 1000), limit,
                                                         topics)
        self._log(errors)
        return values, parts, offs, names

    def poll(self, timeout: float):
        got = self._read(int(timeout * 1000), 1)
        return got[0] if got else None

    def consume(self, num_messages: int = 1, timeout: float = 0):
        """What is fetched, up to num_messages, after waiting up to `timeout`
        for the first (KafkaIngest always passes 0)."""
        return self._read(max(int(timeout * 1000), 0), num_messages)

    def _read(self, timeout_ms: int, n: int) -> list:
        *_, msgs, errors = self._call(self.fetcher.read, timeout_ms, n, False, True)
        self._log(errors)
        return msgs

    @staticmethod
    def _log(errors: list) -> None:
        for code, reason in errors:
            log.warning("kafka: %s (%s)", reason, code)

    # ---- positions

    def incremental_assign(self, tps) -> None:
        self._call(self.fetcher.incremental_assign, _triples(tps))

    def assign(self, tps) -> None:
        if self.grouped:  # (the group's callback) the member holds them paused; the fetcher reads them
            self.meta.assign(tps)
            self.meta.pause(tps)
        self._call(self.fetcher.assign, _triples(tps))

    def seek(self, tp) -> None:
        self._call(self.fetcher.seek, _triples([tp]))

    def commit(self, offsets, asynchronous: bool = True) -> None:
        if self.grouped:  # with the group's generation: a member's commit
            self.meta.commit(offsets=offsets, asynchronous=asynchronous)
        else:
            self._call(self.fetcher.commit, _triples(offsets), asynchronous)

    def get_watermark_offsets(self, tp, timeout: float = 5.0, cached: bool = False):
        return self._call(self.fetcher.watermarks, tp.topic, tp.partition, cached, int(timeout * 1000))

    def list_topics(self, topic: str | None = None, timeout: float = -1):
        return self.meta.list_topics(topic, timeout)

    def close(self) -> None:
        """Leaves the group first (its revoke callback runs and unassigns
        the fetcher), then closes the fetcher."""
        try:
            self.meta.close()
        finally:
            self._call(self.fetcher.close)
