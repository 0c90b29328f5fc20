"""Kafka's partitioner, for routing a key to the node that owns it."""
import pytest

from fsapp.engine.cluster import key_bytes, murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (Apache Kafka)
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("data, expected", sorted(KAFKA_VECTORS.items()))
def test_murmur2_equals_the_java_clients(data, expected):
    assert murmur2(data) == expected


def test_partition_is_the_positive_hash_modulo_the_partitions():
    # Utils.toPositive(murmur2("foobar")) % 50: 1357151166 % 50
    assert partition_for(b"foobar", 50) == 1357151166 % 50 == 16
    assert partition_for("foobar", 50) == 16
    assert partition_for(42, 7) == partition_for("42", 7) == partition_for(b"42", 7)


def test_keys_route_by_their_text():
    assert key_bytes(42) == b"42" and key_bytes("u-1") == b"u-1" and key_bytes((1, "a")) == b"1|a"
    with pytest.raises(TypeError, match="integer or text"):
        key_bytes(1.5)
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(1, 0)


def test_a_partition_is_live_only_past_the_first_fetched_high_watermark():
    from fsapp.engine.cluster import PartitionProgress

    p = PartitionProgress()
    p.assign("t/0", 100, now=0.0)  # what ListOffsets said at assignment: may fall short
    p.update("t/0", 100, None, now=1.0)
    assert p.state("t/0") == "recovering"  # no fetch response yet
    p.update("t/0", 100, 150, now=2.0)  # the first fetch response knows better
    assert p.state("t/0") == "recovering"
    p.update("t/0", 150, 180, now=3.0)  # later watermarks do not move the goal
    assert p.state("t/0") == "live" and p.recovered_s["t/0"] == 3.0
    p.revoke("t/0")
    p.assign("t/0", None, now=4.0)  # an empty partition
    p.update("t/0", None, 0, now=4.5)
    assert p.state("t/0") == "live"
