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


class _Resp:
    """What ReadForwarder.complete sets on a Falcon response."""

    def __init__(self):
        self.headers = {}

    def set_header(self, k, v):
        self.headers[k] = v


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


def test_owners_are_the_fresh_claims_and_a_partition_claimed_twice_goes_to_the_newer():
    from fsapp.engine.members import Membership

    now = [1000.0]
    m = Membership({"bootstrap.servers": "unused:1"}, "fstore.members.g", "http://a:1", stale_s=15,
                   clock=lambda: now[0])
    m._note({"url": "http://a:1", "at": 1000_000, "partitions": [["t", 0], ["t", 1]]})
    m._note({"url": "http://b:1", "at": 1001_000, "partitions": [["t", 1], ["t", 2]]})  # a rebalance in flight
    m._note({"url": "http://c:1", "at": 990_000, "partitions": [["t", 3]], "leaving": True})
    m._note({"url": "http://a:1", "at": 999_000, "partitions": []})  # an older record arriving late
    now[0] = 1002.0
    assert m.owners() == {("t", 0): "http://a:1", ("t", 1): "http://b:1", ("t", 2): "http://b:1"}
    assert [x["url"] for x in m.members()] == ["http://a:1", "http://b:1"]
    now[0] = 1015.5  # a's claim is older than stale_s: a died without a word
    assert m.owners() == {("t", 1): "http://b:1", ("t", 2): "http://b:1"}


def test_a_read_whose_owner_does_not_answer_keeps_this_nodes_rows_and_says_so():
    import json
    import socket

    from fsapp.api.forwarding import ReadForwarder

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    owners = {str(p): ("http://me:1" if p % 2 == 0 else dead) for p in range(4)}

    class Backend:
        def cluster(self):
            return {"mode": "group", "url": "http://me:1", "owners": {"t": owners},
                    "topics": {"t": {"stream": "s", "partitions": 4, "key": ["account_id"]}}}

    keys = list(range(12))
    local = {"metadata": {"feature_names": ["account_id", "n"]},
             "results": [{"values": keys, "statuses": ["PRESENT"] * 12, "event_timestamps": [None] * 12},
                         {"values": [None] * 12, "statuses": ["NOT_FOUND"] * 12, "event_timestamps": [None] * 12}]}
    resp = _Resp()
    fwd = ReadForwarder(Backend(), timeout_s=0.5)
    out = fwd.complete((["v:n"], None, {"account_id": keys}, None, False), json.dumps(local), None, resp)
    assert json.loads(out) == local
    assert resp.headers == {"X-Fstore-Forwarded": dead, "X-Fstore-Forward-Failed": dead} and fwd.failures == 1
    # keys with no route (a float, a null) are this node's answer alone
    resp = _Resp()
    assert fwd.complete((["v:n"], None, {"account_id": [None, 1.5]}, None, False), "{}", None, resp) == "{}"
    assert resp.headers == {}


def test_a_read_of_keys_this_node_is_rebuilding_says_so():
    """Keys of a partition this node is rebuilding read NOT_FOUND (hidden
    until it is live); the response names the partitions in
    X-Fstore-Recovering, so a client can tell them from absent keys."""
    import json

    from fsapp.api.forwarding import ReadForwarder
    from fsapp.engine.cluster import partition_for

    class Backend:
        def cluster(self):
            return {"mode": "group", "url": "http://me:1", "owners": {"t": {str(p): "http://me:1" for p in range(4)}},
                    "topics": {"t": {"stream": "s", "partitions": 4, "key": ["account_id"]}},
                    "partitions": [{"topic": "t", "partition": p, "state": "recovering" if p == 1 else "live"}
                                   for p in range(4)]}

    keys = list(range(12))
    assert any(partition_for(k, 4) == 1 for k in keys) and any(partition_for(k, 4) != 1 for k in keys)
    resp = _Resp()
    text = json.dumps({"metadata": {"feature_names": ["account_id", "n"]}, "results": []})
    fwd = ReadForwarder(Backend())
    assert fwd.complete((["v:n"], None, {"account_id": keys}, None, False), text, None, resp) == text
    assert resp.headers == {"X-Fstore-Recovering": "t/1"}
    resp = _Resp()
    live_keys = [k for k in keys if partition_for(k, 4) != 1]
    fwd.complete((["v:n"], None, {"account_id": live_keys}, None, False), text, None, resp)
    assert resp.headers == {}
