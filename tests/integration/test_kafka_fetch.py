"""fscore.kafkafetch (librdkafka's C API without Message objects) against
confluent-kafka's own consumer on the same topics of the real broker: the
same values, partitions, offsets, keys, timestamps and topics, tombstones
included; seek, watermarks and commit as confluent-kafka's do them."""
import time

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from fscore import kafkafetch

pytestmark = pytest.mark.skipif(not kafkafetch.load(), reason=f"no librdkafka: {kafkafetch.why()}")


def _produce(broker, topics):
    p = broker.producer()
    t0 = int(time.time() * 1000) - 60_000
    sent = []
    for i in range(300):
        topic = topics[i % len(topics)]
        value = None if i % 37 == 5 else (b"" if i % 41 == 3 else f'{{"i":{i},"t":"\u00e9"}}'.encode())
        key = None if i % 3 else f"k{i}".encode()
        p.produce(topic, value, key=key, partition=i % 2, timestamp=t0 + i)
        sent.append((topic, value, key, t0 + i))
    p.flush(10)
    return sent


def _confluent(bootstrap, topics, n):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ref", "enable.auto.commit": False})
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in (0, 1)])
    got, deadline = [], time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += [m for m in c.consume(100, 0.2) if m.error() is None]
    c.close()
    return {(m.topic(), m.partition(), m.offset()): (m.value(), m.key(), m.timestamp()) for m in got}


def _fetcher(bootstrap, **extra):
    return kafkafetch.Fetcher({"bootstrap.servers": bootstrap, "group.id": "native", "enable.auto.commit": False,
                               "enable.partition.eof": False, **extra})


def _read_all(f, n, keep, limit=64, packed=False):
    out = {}
    deadline = time.monotonic() + 20
    while len(out) < n and time.monotonic() < deadline:
        if packed:
            values, parts, offs, names, errors = f.read_packed(200, limit, True)
            msgs = None
            assert isinstance(values, kafkafetch.Packed) and values.data.dtype == np.uint8
            assert values.tolist() == list(values) == values[:]
            if len(values):
                assert values[-1] == values[len(values) - 1]
                idx = np.arange(len(values))[::-2]
                assert values.take(idx).tolist() == [values[i] for i in idx]
        else:
            values, parts, offs, names, msgs, errors = f.read(200, limit, True, keep)
        assert errors == [] and parts.dtype == np.int64 and offs.dtype == np.int64
        assert len(values) == len(parts) == len(offs) == len(names) <= limit
        for i, v in enumerate(values):
            m = msgs[i] if keep else None
            out[(names[i], int(parts[i]), int(offs[i]))] = (v, m)
    return out


@pytest.mark.parametrize("keep,packed", [(False, False), (True, False), (False, True)],
                         ids=["lean", "kept", "packed"])
def test_a_batch_read_natively_is_what_confluent_kafka_reads(kafka_broker, keep, packed):
    """Values (tombstones None, empty values b"", UTF-8 bytes as sent),
    partitions, offsets and topics; keys and timestamps when kept; the same
    through `read_packed`'s values laid back to back (`Packed`)."""
    topics = [f"fetch-a-{keep}-{packed}", f"fetch-b-{keep}-{packed}"]
    for t in topics:
        kafka_broker.create_topic(t, partitions=2)
    sent = _produce(kafka_broker, topics)
    want = _confluent(kafka_broker.bootstrap, topics, len(sent))
    assert len(want) == len(sent)
    f = _fetcher(kafka_broker.bootstrap)
    f.assign([(t, p, OFFSET_BEGINNING) for t in topics for p in (0, 1)])
    got = _read_all(f, len(want), keep, packed=packed)
    assert set(got) == set(want)
    for k, (value, m) in got.items():
        assert value == want[k][0]  # None for a tombstone, b"" for an empty value
        if keep:
            assert (m.topic(), m.partition(), m.offset()) == k and m.error() is None
            assert m.value() == value and m.key() == want[k][1] and m.timestamp() == want[k][2]
    f.close()
    f.close()  # (twice: nothing)
    with pytest.raises(kafkafetch.FetchError, match="closed"):
        f.read(0, 10)
    with pytest.raises(kafkafetch.FetchError, match="closed"):
        f.read_packed(0, 10)


def test_packed_values_read_as_a_sequence_of_bytes():
    data = np.frombuffer(b"abcdefg", dtype=np.uint8).copy()
    v = kafkafetch.Packed(data, np.array([0, 3, 3, 3, 7], dtype=np.int64), np.array([0, 0, 1, 0], dtype=bool))
    assert len(v) == 4 and list(v) == [b"abc", b"", None, b"defg"] and None in v and b"defg" in v
    assert v[-1] == b"defg" and v[1:3] == [b"", None]
    assert v.take([3, 0, 2]).tolist() == [b"defg", b"abc", None] and None not in v.take([0, 3])
    with pytest.raises(IndexError):
        v[4]
    with pytest.raises(IndexError):
        v.take([5])
    with pytest.raises(ValueError, match="uint8"):
        kafkafetch.Packed(np.zeros(3, dtype=np.int64), np.array([0], dtype=np.int64))


def test_seek_watermarks_and_commit(kafka_broker):
    topic = "fetch-seek"
    kafka_broker.create_topic(topic, partitions=2)
    p = kafka_broker.producer()
    for i in range(40):
        p.produce(topic, str(i).encode(), partition=i % 2)
    p.flush(10)
    f = _fetcher(kafka_broker.bootstrap)
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "native"})
    # (as the broker answers: tansu's high watermark of a partition written in one batch is 1)
    assert f.watermarks(topic, 0, cached=False) == c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    f.assign([(topic, 0, 5)])
    first = _read_all(f, 15, False)
    assert sorted(o for _, _, o in first) == list(range(5, 20))
    f.seek([(topic, 0, 18)])  # what was fetched before the seek is not returned after it
    again = _read_all(f, 2, False)
    assert sorted(o for _, _, o in again) == [18, 19]
    assert f.watermarks(topic, 0, cached=True)[1] >= 1  # from the fetch responses
    f.incremental_assign([(topic, 1, 10)])
    more = _read_all(f, 10, False)
    assert sorted((pt, o) for _, pt, o in more) == [(1, o) for o in range(10, 20)]
    f.commit([(topic, 0, 20), (topic, 1, 20)], False)
    assert [tp.offset for tp in c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)] \
        == [20, 20]
    c.close()
    # nothing more: the wait for a first message ends at the timeout, empty
    t = time.monotonic()
    assert f.read(100, 10)[0] == [] and time.monotonic() - t >= 0.09
    f.close()


def test_bad_properties_say_which(kafka_broker):
    with pytest.raises(ValueError, match="no.such.property"):
        kafkafetch.Fetcher({"bootstrap.servers": kafka_broker.bootstrap, "no.such.property": 1})
    with pytest.raises(ValueError, match="error_cb: callbacks"):
        kafkafetch.Fetcher({"bootstrap.servers": kafka_broker.bootstrap, "error_cb": print})
