"""Scale-out on Kafka (`kafka.assign: group`) against a real broker (tansu),
engines in this process: a revoke hides the revoked partitions' keys at once
(never a stale PRESENT), an assignment replays them exactly once, writes
that would live on one node only are refused, and views that cannot follow
the topic's partitioning are refused or flagged."""
import json
import threading
import time

import pyarrow as pa
import pytest

from fsapp.engine import Engine
from fsapp.engine.cluster import partition_for
from fsapp.engine.errors import PartitionOwned
from fsapp.engine.kafka import KafkaIngest
from fsapp.engine.kafka_config import KafkaConfig
from fsapp.registry.errors import RepoError
from fsapp.registry.repo import Repo

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, merchant_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = '{topic}', timestamp = 'ts', allowed_lateness = '1d');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments FROM payments;
"""
BY_MERCHANT = """
CREATE ENTITY merchant (merchant_id BIGINT);
CREATE FEATURE VIEW merchant_totals AS
SELECT merchant_id, count(*) OVER lifetime() AS n_payments FROM payments;
"""
KEYS = 12


def make_repo(tmp_path, name, topic, bootstrap, group, defs=DEFS, native=True):
    root = tmp_path / name
    root.mkdir()
    (root / "fstore.yaml").write_text(
        f"project: grouptest\nkafka:\n  bootstrap_servers: {bootstrap}\n  assign: group\n  group_id: {group}\n"
        "  batch_size: 200\n  poll_timeout_ms: 50\n  session.timeout.ms: 6000\n  heartbeat.interval.ms: 500\n"
        "  dead_letter_file: data/dead.jsonl\n" + ("" if native else "  native_fetch: false\n"))
    (root / "defs.sql").write_text(defs.format(topic=topic))
    repo = Repo(root)
    repo.apply()
    return repo


def open_engine(repo):
    return Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never")


def produce(broker, topic, partitions, n, start=0, account_of=lambda i: i % KEYS):
    """n keyed events (key = the account id's text, Kafka's murmur2 partitioner); returns the
    count per account."""
    p = broker.producer(partitioner="murmur2_random")
    t = time.time_ns() // 1000 - 60_000_000
    counts = {}
    seen = []

    def delivered(err, msg):
        assert err is None, err
        seen.append((int(msg.key()), msg.partition()))

    for i in range(start, start + n):
        a = account_of(i)
        p.produce(topic, json.dumps({"account_id": a, "merchant_id": i % 5, "amount": 1.0, "ts": t + i}).encode(),
                  key=str(a).encode(), on_delivery=delivered)
        counts[a] = counts.get(a, 0) + 1
    p.flush(10)
    # librdkafka's murmur2_random is the Java client's partitioner, and so is ours
    assert all(partition_for(a, partitions) == part for a, part in seen)
    return counts


def counts_of(engine, accounts):
    out = engine.get_online_features(["account_totals:n_payments"], entities={"account_id": accounts})
    return dict(zip(accounts, out["results"][1]["values"])), dict(zip(accounts, out["results"][1]["statuses"]))


def wait(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what()
        time.sleep(0.05)


@pytest.mark.parametrize("native", [True, False], ids=["librdkafka", "consume"])
def test_a_revoked_partition_never_reads_present_and_a_reassigned_one_counts_once(kafka_broker, tmp_path, native):
    """Through both readers: the fetcher (the group held by a confluent-kafka
    consumer whose partitions are paused) and confluent-kafka's consume()."""
    topic, parts = f"payments-group-revoke-{native}", 2
    kafka_broker.create_topic(topic, partitions=parts)
    expected = produce(kafka_broker, topic, parts, 240)
    owner_of = {a: partition_for(a, parts) for a in range(KEYS)}
    repo_a = make_repo(tmp_path, "a", topic, kafka_broker.bootstrap, f"g-revoke-{native}", native=native)
    repo_b = make_repo(tmp_path, "b", topic, kafka_broker.bootstrap, f"g-revoke-{native}", native=native)
    a = open_engine(repo_a)
    ingest_a = KafkaIngest(a, KafkaConfig.from_repo(repo_a)).start()
    assert ingest_a.native == native and ingest_a.stats()["reader"] == ("librdkafka" if native else "consume()")
    b = ingest_b = None
    try:
        wait(lambda: ingest_a.cluster()["partitions"] and all(
             p["state"] == "live" for p in ingest_a.cluster()["partitions"]) and len(ingest_a.assigned) == parts,
             60, lambda: f"A did not own and catch up: {ingest_a.cluster()}")
        assert counts_of(a, list(range(KEYS)))[0] == expected

        # a second member joins: A must stop serving whatever it gives away, at
        # once; poll A all along the rebalance
        stale = []
        stop = threading.Event()

        def poll_a():
            # a key PRESENT on A while its partition is not A's (before and after the read)
            while not stop.is_set():
                before = {p for _, p in set(ingest_a.assigned)}
                values, statuses = counts_of(a, list(range(KEYS)))
                owned = before | {p for _, p in set(ingest_a.assigned)}
                stale.extend((k, values[k], owned) for k in range(KEYS)
                             if statuses[k] == "PRESENT" and owner_of[k] not in owned)
                time.sleep(0.002)

        watcher = threading.Thread(target=poll_a)
        watcher.start()
        b = open_engine(repo_b)
        ingest_b = KafkaIngest(b, KafkaConfig.from_repo(repo_b)).start()
        wait(lambda: len(ingest_a.assigned) == 1 and len(ingest_b.assigned) == 1
             and all(p["state"] == "live" for n in (ingest_a, ingest_b) for p in n.cluster()["partitions"]),
             60, lambda: f"no 1+1 split: A {ingest_a.cluster()} B {ingest_b.cluster()}")
        # events produced meanwhile reach the owner only
        more = produce(kafka_broker, topic, parts, 120, start=240)
        for k, n in more.items():
            expected[k] += n

        def served_by_owners_only():
            # the current owners (tansu may rebalance once more): exact there, NOT_FOUND elsewhere
            for engine, ingest in ((a, ingest_a), (b, ingest_b)):
                mine = {p for _, p in set(ingest.assigned)}
                values, statuses = counts_of(engine, list(range(KEYS)))
                for k in range(KEYS):
                    want = (expected[k], "PRESENT") if owner_of[k] in mine else (0, "NOT_FOUND")
                    if (values[k], statuses[k]) != want:
                        return False
            return True

        wait(served_by_owners_only, 40, lambda: f"not served by the owners: A {ingest_a.cluster()} "
             f"{counts_of(a, list(range(KEYS)))} B {ingest_b.cluster()} {counts_of(b, list(range(KEYS)))}")
        stop.set()
        watcher.join()
        assert not stale, stale[:5]
        assert ingest_a.stats()["dropped_keys"] > 0
    finally:
        for ingest, engine in ((ingest_a, a), (ingest_b, b)):
            if ingest is not None:
                ingest.stop()
            if engine is not None:
                engine.close()


@pytest.mark.parametrize("native,handoff", [(True, "assign"), (True, "revoke"), (False, "revoke")],
                         ids=["librdkafka-assign", "librdkafka-revoke", "consume-revoke"])
def test_a_batch_read_across_a_handoff_counts_once_and_shows_no_given_away_key(kafka_broker, tmp_path, monkeypatch,
                                                                                native, handoff):
    """Through the fetcher the next batch is read ahead while one is
    applied, and the group's callbacks run in `serve()` between batches; an
    assignment there seeks every partition back to the engine's offsets, so
    the batch read ahead of it would count twice if applied: it is dropped
    and read again. A revoke (there, or inside consume()'s later chunk of a
    batch) hides the keys of the partitions given away, new ones included:
    none reads PRESENT after it."""
    from confluent_kafka import TopicPartition

    from fsapp.engine import kafka as kafka_mod

    monkeypatch.setattr(kafka_mod, "CONSUME_CHUNK", 4)
    topic, parts = f"payments-group-handoff-{native}-{handoff}", 2
    kafka_broker.create_topic(topic, partitions=parts)
    expected = produce(kafka_broker, topic, parts, 60)
    repo = make_repo(tmp_path, "a", topic, kafka_broker.bootstrap, f"g-handoff-{native}-{handoff}", native=native)
    engine = open_engine(repo)
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    consumer = ingest.consumer
    ingest._subscribe()
    try:
        wait(lambda: ingest.poll_once() is not None and len(ingest.assigned) == parts
             and sum(ingest.counts["consumed"].values()) == 60
             and all(p["state"] == "live" for p in ingest.cluster()["partitions"]), 60, lambda: ingest.stats())
        # 5 full batches of 200, each event of an account not seen before
        fresh = list(range(1000, 2000))
        expected.update(produce(kafka_broker, topic, parts, 1000, start=60, account_of=lambda i: 1000 + i - 60))
        handed = []

        def hand_off():
            handed.append(sorted(ingest.assigned))
            tps = [TopicPartition(t, p) for t, p in sorted(ingest.assigned)]
            if handoff == "assign":  # the same partitions again: positions back to the engine's offsets
                ingest._on_assign(consumer, tps)
            else:
                ingest._on_revoke(consumer, tps)

        if native:
            # a batch applied and the next read ahead; then serve() runs the handoff
            wait(lambda: ingest.poll_once() is not None and ingest._ahead is not None, 30, lambda: ingest.stats())
            real_serve = consumer.serve

            def serve():
                if not handed:
                    hand_off()
                return real_serve()

            monkeypatch.setattr(consumer, "serve", serve)
        else:
            calls = []

            class Revoking:
                """The consumer, with the group's revoke run inside the batch's second consume()."""

                def __getattr__(self, name):
                    return getattr(consumer, name)

                def consume(self, n, timeout):
                    calls.append(n)
                    if len(calls) == 2:
                        hand_off()
                    return consumer.consume(n, timeout)

            ingest.consumer = Revoking()
        rereads = ingest.rereads
        if handoff == "assign":
            wait(lambda: ingest.poll_once() is not None and
                 sum(engine.offsets.get(f"{topic}/{p}", 0) for p in range(parts)) >= 1060, 30, lambda: ingest.stats())
            for _ in range(3):
                ingest.poll_once()
            values, statuses = counts_of(engine, list(range(KEYS)) + fresh)
            assert values == {k: expected[k] for k in values}  # every event once
            assert ingest.rereads > rereads  # (the batch read ahead of the assignment, read again)
        else:
            for _ in range(3):
                ingest.poll_once()
            values, statuses = counts_of(engine, list(range(KEYS)) + fresh)
            shown = {k: values[k] for k, st in statuses.items() if st != "NOT_FOUND"}
            assert not shown, f"{len(shown)} key(s) of revoked partitions read PRESENT: {list(shown.items())[:5]}"
        assert handed and handed[0] == [(topic, p) for p in range(parts)]
    finally:
        ingest.consumer = consumer
        ingest.stop()
        engine.close()


def test_writes_that_would_live_on_one_node_are_refused(kafka_broker, tmp_path):
    topic = "payments-group-refuse"
    kafka_broker.create_topic(topic, partitions=2)
    repo = make_repo(tmp_path, "n", topic, kafka_broker.bootstrap, "g-refuse")
    engine = open_engine(repo)
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    try:
        with pytest.raises(PartitionOwned, match="Produce it to payments-group-refuse"):
            engine.push("payments", [{"account_id": 1, "merchant_id": 1, "amount": 1.0, "ts": 1}])
        out = engine.materialize(0, 10, now=time.time_ns() // 1000)
        assert "account_totals" in out["skipped"] and out["views"] == {}
    finally:
        ingest.stop()
        engine.close()


def test_views_keyed_by_entities_the_topic_cannot_both_follow_are_refused(tmp_path):
    repo = make_repo(tmp_path, "n", "t", "127.0.0.1:1", "g-keys", DEFS + BY_MERCHANT)
    engine = open_engine(repo)
    try:
        with pytest.raises(RepoError, match="account_totals by account_id, merchant_totals by merchant_id"):
            KafkaIngest(engine, KafkaConfig.from_repo(repo))
    finally:
        engine.close()


def test_a_view_keyed_unlike_its_topic_is_found_and_the_node_is_not_ready(kafka_broker, tmp_path):
    topic = "payments-group-split"
    kafka_broker.create_topic(topic, partitions=2)
    defs = DEFS.replace("CREATE FEATURE VIEW account_totals AS\nSELECT account_id,", "") \
        .replace("count(*) OVER lifetime() AS n_payments FROM payments;\n", "") + BY_MERCHANT
    repo = make_repo(tmp_path, "n", topic, kafka_broker.bootstrap, "g-split", defs)
    produce(kafka_broker, topic, 2, 100)  # keyed by account: a merchant's events are on both partitions
    engine = open_engine(repo)
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo)).start()
    try:
        wait(lambda: ingest.keys.split, 30, lambda: f"no split found: {ingest.stats()}")
        ok, why = ingest.readiness()
        assert not ok and "merchant_totals" in why and "partial values" in why
        assert ingest.cluster()["split_views"]["merchant_totals"] > 0
    finally:
        ingest.stop()
        engine.close()


def test_a_replayed_partition_is_not_judged_late_against_the_state_it_replaced(kafka_broker, tmp_path):
    """Lateness watermarks are per stream (engine) and per view (window
    state): kept over a rebalance, the replay of a partition's old events was
    judged late against the newer events seen before, and dropped."""
    topic, parts = "payments-group-late", 2
    kafka_broker.create_topic(topic, partitions=parts)
    defs = DEFS.replace("allowed_lateness = '1d'", "allowed_lateness = '1m'")
    repo_a = make_repo(tmp_path, "a", topic, kafka_broker.bootstrap, "g-late", defs)
    repo_b = make_repo(tmp_path, "b", topic, kafka_broker.bootstrap, "g-late", defs)
    p = kafka_broker.producer(partitioner="murmur2_random")
    now = time.time_ns() // 1000
    expected = {}

    def send(t0, n):
        for i in range(n):
            a = i % KEYS
            p.produce(topic, json.dumps({"account_id": a, "merchant_id": 0, "amount": 1.0,
                                         "ts": t0 + i * 10_000}).encode(), key=str(a).encode())
            expected[a] = expected.get(a, 0) + 1
        p.flush(10)

    send(now - 7_200_000_000, 200)  # two hours ago, over 2 s
    a = open_engine(repo_a)
    ingest_a = KafkaIngest(a, KafkaConfig.from_repo(repo_a)).start()
    b = ingest_b = None
    try:
        wait(lambda: sum(ingest_a.counts["consumed"].values()) == 200, 30, lambda: f"A: {ingest_a.stats()}")
        send(now - 10_000_000, 200)  # now: the watermark moves two hours on
        wait(lambda: counts_of(a, list(range(KEYS)))[0] == expected, 20, lambda: "A did not catch up")
        b = open_engine(repo_b)
        ingest_b = KafkaIngest(b, KafkaConfig.from_repo(repo_b)).start()
        wait(lambda: len(ingest_a.assigned) == 1 and len(ingest_b.assigned) == 1
             and all(p["state"] == "live" for n in (ingest_a, ingest_b) for p in n.cluster()["partitions"]),
             60, lambda: f"no 1+1 split: A {ingest_a.cluster()} B {ingest_b.cluster()}")
        for engine, ingest in ((a, ingest_a), (b, ingest_b)):
            mine = [k for k in range(KEYS) if (topic, partition_for(k, parts)) in ingest.assigned]
            assert mine and counts_of(engine, mine)[0] == {k: expected[k] for k in mine}
        assert a.late_total == 0 and sum(rt.window_dropped for rt in a.runtimes.values()) == 0
    finally:
        for ingest, engine in ((ingest_a, a), (ingest_b, b)):
            if ingest is not None:
                ingest.stop()
            if engine is not None:
                engine.close()


def test_dropping_one_partition_deletes_exactly_its_keys_and_their_window_state(tmp_path):
    """The partial revoke (a cooperative rebalance): no broker needed, the
    engine's tagged pushes as the ingest makes them."""
    import numpy as np

    from fsapp.engine.cluster import PartitionKeys

    repo = make_repo(tmp_path, "n", "t", "127.0.0.1:1", "g-drop")
    engine = open_engine(repo)
    keys = PartitionKeys()
    engine.on_applied = keys.note
    try:
        t = time.time_ns() // 1000 - 60_000_000
        rows = [{"account_id": a, "merchant_id": 0, "amount": 1.0, "ts": t + i} for i, a in enumerate([1, 2, 3, 1, 2])]
        engine.push("payments", rows, offsets={"t/0": 3, "t/1": 2}, tags=np.array([0, 1, 0, 0, 1]))
        assert counts_of(engine, [1, 2, 3])[0] == {1: 2, 2: 2, 3: 1}
        with engine.lock:
            assert keys.drop(list(engine.runtimes.values()), {1}) == 1
        values, statuses = counts_of(engine, [1, 2, 3])
        assert statuses == {1: "PRESENT", 2: "NOT_FOUND", 3: "PRESENT"} and values[1] == 2
        # the key comes back (its partition replayed): it counts from nothing
        engine.push("payments", rows[1:2], offsets={"t/1": 1}, tags=np.array([1]))
        assert counts_of(engine, [1, 2, 3])[0] == {1: 2, 2: 1, 3: 1}
        assert not keys.split
    finally:
        engine.close()


def test_a_recovering_partitions_keys_are_hidden_from_their_first_write_until_it_is_live(tmp_path):
    """The hiding without a broker, as the ingest drives it: while partition
    1 is recovering, its keys read NOT_FOUND (a reader never sees the partial
    count) and partition 0's read as usual; `reveal` shows them at once."""
    import numpy as np

    from fsapp.engine.cluster import PartitionKeys

    repo = make_repo(tmp_path, "n", "t", "127.0.0.1:1", "g-hide")
    engine = open_engine(repo)
    keys = PartitionKeys()
    engine.on_applied, engine.before_applied = keys.note, keys.before
    try:
        t = time.time_ns() // 1000 - 60_000_000
        rows = [{"account_id": a, "merchant_id": 0, "amount": 1.0, "ts": t + i} for i, a in enumerate([1, 2, 3, 2])]
        keys.set_recovering({rt: {1} for rt in engine.runtimes.values()})
        engine.push("payments", rows, offsets={"t/0": 2, "t/1": 2}, tags=np.array([0, 1, 0, 1]))
        assert counts_of(engine, [1, 2, 3]) == ({1: 1, 2: 0, 3: 1}, {1: "PRESENT", 2: "NOT_FOUND", 3: "PRESENT"})
        rt = engine.runtimes[("account_totals", 1)]
        assert not rt.table.insert_hidden  # reset after the push, whatever happened in it
        # a new key of the live partition while 1 still recovers: readable after its push
        engine.push("payments", [{"account_id": 4, "merchant_id": 0, "amount": 1.0, "ts": t + 9}],
                    offsets={"t/0": 3}, tags=np.array([0]))
        assert counts_of(engine, [4])[1] == {4: "PRESENT"}
        keys.set_recovering({})
        with engine.lock:
            assert keys.reveal(list(engine.runtimes.values()), {1}) == 1
        assert counts_of(engine, [1, 2, 3, 4])[0] == {1: 1, 2: 2, 3: 1, 4: 1}
    finally:
        engine.close()


TWO_TOPICS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, merchant_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = 'pay', timestamp = 'ts', allowed_lateness = '1d');
CREATE STREAM refunds (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = 'ref', timestamp = 'ts', allowed_lateness = '1d');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments FROM payments;
CREATE FEATURE VIEW account_refunds AS
SELECT account_id, count(*) OVER lifetime() AS n_refunds FROM refunds;
"""


def test_a_partition_recovering_in_one_topic_hides_no_keys_of_the_same_numbered_partition_of_another(tmp_path):
    """Partition 1 of topic `ref` is being rebuilt: the keys of `ref`'s
    partition 1 read NOT_FOUND, those of `pay`'s partition 1 (another topic,
    the same number) read as usual, and once `ref/1` catches up its keys show."""
    import numpy as np

    from fsapp.engine.kafka import KafkaIngest
    from fsapp.engine.kafka_config import KafkaConfig

    repo = make_repo(tmp_path, "n", "unused", "127.0.0.1:1", "g-two", defs=TWO_TOPICS)
    engine = open_engine(repo)
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    try:
        ingest.progress.assign("ref/1", 100, time.monotonic())  # recovering: its offset is far from 100
        ingest._sync_hidden()
        t = time.time_ns() // 1000 - 60_000_000
        engine.push("payments", [{"account_id": a, "merchant_id": 0, "amount": 1.0, "ts": t} for a in (1, 2)],
                    offsets={"pay/0": 1, "pay/1": 1}, tags=np.array([0, 1]))
        engine.push("refunds", [{"account_id": a, "amount": 1.0, "ts": t} for a in (1, 2)],
                    offsets={"ref/0": 1, "ref/1": 1}, tags=np.array([0, 1]))
        paid = engine.get_online_features(["account_totals:n_payments"], entities={"account_id": [1, 2]})
        refunded = engine.get_online_features(["account_refunds:n_refunds"], entities={"account_id": [1, 2]})
        assert paid["results"][1]["statuses"] == ["PRESENT", "PRESENT"]  # pay/1 is live
        assert refunded["results"][1]["statuses"] == ["PRESENT", "NOT_FOUND"]  # ref/1 is not
        ingest.progress.update("ref/1", 100, 100, time.monotonic())
        ingest._sync_hidden()
        refunded = engine.get_online_features(["account_refunds:n_refunds"], entities={"account_id": [1, 2]})
        assert refunded["results"][1]["values"] == [1, 1] and refunded["results"][1]["statuses"] == ["PRESENT"] * 2
    finally:
        ingest.stop(1)
        engine.close()


def test_a_row_reused_after_a_max_keys_eviction_is_not_taken_for_a_split_view(tmp_path):
    import numpy as np

    from fsapp.engine.cluster import PartitionKeys

    repo = make_repo(tmp_path, "n", "t", "127.0.0.1:1", "g-evict")
    engine = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never", max_keys=4, capacity=4)
    keys = PartitionKeys()
    engine.on_applied = keys.note
    try:
        t = time.time_ns() // 1000 - 60_000_000
        for i in range(40):  # each key once, alternating partitions: rows are evicted and reused
            engine.push("payments", [{"account_id": i, "merchant_id": 0, "amount": 1.0, "ts": t + i}],
                        offsets={f"t/{i % 2}": i}, tags=np.array([i % 2]))
        assert engine.runtimes[("account_totals", 1)].table.stats()["evicted_capacity"] > 0
        assert not keys.split
    finally:
        engine.close()


def test_a_replay_logs_nothing_offline_twice_and_sends_no_dead_letter_again(kafka_broker, tmp_path):
    """Group mode replays a partition from its start whenever it is assigned
    (here: a restart, which drops the recovered keys). The offline log and
    the dead letters of this data directory already hold the replayed events:
    they appended them again, so a training set built on this node counted
    every event twice while the online store counted it once."""
    topic, parts = "payments-group-offline", 2
    kafka_broker.create_topic(topic, partitions=parts)
    repo = make_repo(tmp_path, "a", topic, kafka_broker.bootstrap, "g-offline")
    p = kafka_broker.producer(partitioner="murmur2_random")
    expected = produce(kafka_broker, topic, parts, 240)
    for bad in (b"{not json", b'{"account_id": "x"}'):
        p.produce(topic, bad, key=b"1")
    p.flush(10)
    dead_file = repo.root / "data" / "dead.jsonl"
    accounts = list(range(KEYS))

    def run(until_consumed):
        engine = open_engine(repo)
        ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo)).start()
        try:
            wait(lambda: counts_of(engine, accounts)[0] == expected and
                 all(q["state"] == "live" for q in ingest.cluster()["partitions"])
                 and sum(ingest.counts["consumed"].values()) >= until_consumed,
                 60, lambda: f"did not catch up: {ingest.cluster()} {counts_of(engine, accounts)}")
        finally:
            ingest.stop()
        engine.checkpoint()  # flushes the offline log
        return engine

    run(242).close()
    assert len(dead_file.read_text().splitlines()) == 2
    # more while the node is down (and one more bad one): the replay batches
    # hold events logged before and new ones
    for k, n in produce(kafka_broker, topic, parts, 60, start=240).items():
        expected[k] += n
    p.produce(topic, b"[1, 2]", key=b"2")
    p.flush(10)
    engine = run(303)
    try:
        offline = engine.con.execute(
            f"SELECT account_id, count(*) FROM read_parquet('{engine.offline.log.glob('payments')}') "
            "GROUP BY ALL").fetchall()
        assert dict(offline) == expected
        letters = [json.loads(line) for line in dead_file.read_text().splitlines()]
        assert len(letters) == 3 and len({(d["partition"], d["offset"]) for d in letters}) == 3
        # the training set on this node agrees with what its online store served
        # (`run` waited for exactly these counts; the stop revoked them since)
        now = time.time_ns() // 1000
        labels = pa.table({"account_id": accounts, "event_timestamp": pa.array([now] * KEYS, pa.timestamp("us"))})
        train = engine.get_historical_features(labels, ["account_totals:n_payments"]).to_arrow()
        got = dict(zip(train.column("account_id").to_pylist(), train.column("n_payments").to_pylist()))
        assert got == expected
    finally:
        engine.close()


def test_keys_of_a_partition_being_replayed_read_not_found_until_it_is_live(kafka_broker, tmp_path):
    """A member rebuilding a partition (a start, a takeover, any eager
    rebalance) replays it from its start: until it has caught up its keys read
    NOT_FOUND — never PRESENT with the partial count of the replay so far."""
    topic, parts = "payments-group-replay", 1
    kafka_broker.create_topic(topic, partitions=parts)
    expected = produce(kafka_broker, topic, parts, 30_000)
    repo = make_repo(tmp_path, "a", topic, kafka_broker.bootstrap, "g-replay")
    engine = open_engine(repo)
    ingest = None
    seen, partial = [], []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            values, statuses = counts_of(engine, list(range(KEYS)))
            seen.append(sum(s == "PRESENT" for s in statuses.values()))
            partial.extend((k, values[k], expected[k]) for k in range(KEYS)
                           if statuses[k] == "PRESENT" and values[k] != expected[k])
            time.sleep(0.001)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo)).start()
        wait(lambda: ingest.cluster()["partitions"] and all(p["state"] == "live" for p in ingest.cluster()["partitions"]),
             60, lambda: f"did not catch up: {ingest.cluster()}")
        wait(lambda: counts_of(engine, list(range(KEYS)))[0] == expected, 10, lambda: "counts not exact when live")
    finally:
        stop.set()
        watcher.join()
        if ingest is not None:
            ingest.stop()
        engine.close()
    assert not partial, partial[:5]
    assert 0 in seen and len(seen) > 20, seen[:20]  # polled through the replay, not only after it
    assert engine is not None and ingest.stats()["recovering"] == []


def test_a_rebalance_that_gives_a_partition_back_keeps_its_state_and_reads_on_from_its_offset(kafka_broker,
                                                                                              tmp_path):
    """The eager assignors revoke every partition at every rebalance, and a
    node dropped the keys of each and replayed it from its start when it came
    back: seconds of replay per rebalance, and a topic past its retention
    lost its old events. A revoke now parks the partitions (keys hidden at
    once, state and offsets kept); the assignment resumes the ones it gives
    back from the engine's offsets (recovering, still hidden, until caught
    up) and drops the others. Rebalances driven here through the callbacks,
    on a consumer assigned by hand."""
    from confluent_kafka import TopicPartition

    topic, parts = "payments-group-park", 2
    kafka_broker.create_topic(topic, partitions=parts)
    expected = produce(kafka_broker, topic, parts, 240)
    owner_of = {a: partition_for(a, parts) for a in range(KEYS)}
    repo = make_repo(tmp_path, "a", topic, kafka_broker.bootstrap, "g-park")
    engine = open_engine(repo)
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    both = [TopicPartition(topic, p) for p in range(parts)]

    def caught_up(n):
        deadline = time.monotonic() + 30
        while sum(ingest.counts["consumed"].values()) < n or ingest.stats()["recovering"]:
            assert time.monotonic() < deadline, ingest.cluster()
            ingest.poll_once()

    try:
        ingest._on_assign(ingest.consumer, both)
        caught_up(240)
        assert counts_of(engine, list(range(KEYS))) == (expected, {k: "PRESENT" for k in range(KEYS)})
        offsets = dict(engine.offsets)
        ingest._on_revoke(ingest.consumer, both)
        # parked: hidden at once, state and offsets kept
        assert set(counts_of(engine, list(range(KEYS)))[1].values()) == {"NOT_FOUND"}
        assert engine.offsets == offsets and ingest.stats()["dropped_keys"] == 0
        assert ingest.cluster()["parked"] == [f"{topic}/0", f"{topic}/1"] and ingest.cluster()["partitions"] == []
        more = produce(kafka_broker, topic, parts, 60, start=240)
        for k, n in more.items():
            expected[k] += n
        # partition 0 given back, partition 1 not: 0 reads on from its offset, 1's keys go
        ingest._on_assign(ingest.consumer, both[:1])
        assert ingest.stats()["recovering"] == [f"{topic}/0"] and ingest.stats()["parked"] == []
        assert set(counts_of(engine, list(range(KEYS)))[1].values()) == {"NOT_FOUND"}
        assert f"{topic}/1" not in engine.offsets and ingest.stats()["dropped_keys"] > 0
        new_on_0 = sum(n for k, n in more.items() if owner_of[k] == 0)
        caught_up(240 + new_on_0)
        assert sum(ingest.counts["consumed"].values()) == 240 + new_on_0  # nothing of partition 0 read twice
        values, statuses = counts_of(engine, list(range(KEYS)))
        for k in range(KEYS):
            assert (values[k], statuses[k]) == ((expected[k], "PRESENT") if owner_of[k] == 0 else (0, "NOT_FOUND"))
        # partition 1 assigned again: never held now, replayed from its start into empty state
        ingest._on_revoke(ingest.consumer, both[:1])
        ingest._on_assign(ingest.consumer, both)
        caught_up(240 + new_on_0 + sum(n for k, n in expected.items() if owner_of[k] == 1))
        assert counts_of(engine, list(range(KEYS))) == (expected, {k: "PRESENT" for k in range(KEYS)})
        assert engine.late_total == 0
    finally:
        ingest.stop()
        engine.close()


def test_a_restarted_node_resumes_its_partitions_from_its_checkpoint_and_log(kafka_broker, tmp_path):
    """A node that started dropped everything it recovered and replayed each
    partition the group gave it from its start (a restart of a node holding
    a day of a busy topic: a day of replay; past the topic's retention: lost
    events). The engine of `fstore serve` in group mode now keeps the
    partition of every row (`track_partitions`: in its checkpoints, and
    rebuilt by replay from the partitions the WAL records carry); at start the
    recovered keys are hidden, and the first assignment resumes the
    partitions it gives back from the engine's offsets (through the
    checkpoint, then through the log after it) and drops the others."""
    topic, parts = "payments-group-restart", 2
    kafka_broker.create_topic(topic, partitions=parts)
    expected = produce(kafka_broker, topic, parts, 240)
    repo = make_repo(tmp_path, "a", topic, kafka_broker.bootstrap, "g-restart")

    def start():
        engine = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never",
                        track_partitions=True)
        return engine, KafkaIngest(engine, KafkaConfig.from_repo(repo))

    def live_with(ingest, engine, n):
        wait(lambda: len(ingest.assigned) == parts and not ingest.stats()["recovering"]
             and counts_of(engine, list(range(KEYS)))[0] == expected, 60,
             lambda: f"not caught up: {ingest.cluster()} {counts_of(engine, list(range(KEYS)))}")
        assert sum(ingest.counts["consumed"].values()) == n

    engine, ingest = start()
    try:
        ingest.start()
        live_with(ingest, engine, 240)
        engine.checkpoint()
        for k, n in produce(kafka_broker, topic, parts, 36, start=240).items():
            expected[k] += n
        live_with(ingest, engine, 276)  # these only in the log after the checkpoint
    finally:
        ingest.stop()  # leaves the group: its partitions are parked (hidden), not dropped
        assert set(counts_of(engine, list(range(KEYS)))[1].values()) == {"NOT_FOUND"}
        engine.close()
    for k, n in produce(kafka_broker, topic, parts, 24, start=276).items():
        expected[k] += n
    engine, ingest = start()
    try:
        # recovered, but nobody assigned them yet: hidden
        assert set(counts_of(engine, list(range(KEYS)))[1].values()) == {"NOT_FOUND"}
        ingest.start()
        live_with(ingest, engine, 24)  # only what arrived while it was down: nothing read twice
        assert engine.late_total == 0 and ingest.stats()["dropped_keys"] == 0
    finally:
        ingest.stop()
        engine.close()
