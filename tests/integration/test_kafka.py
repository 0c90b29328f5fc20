"""Kafka ingestion against a real broker (tansu): JSON events reach the online
tables; malformed messages go to the dead-letter topic with their reason and
ingestion goes on; offsets come back from the engine's WAL and checkpoints,
not from Kafka's committed offsets."""
import json
import time

import pytest

from fsapp.engine import Engine
from fsapp.engine import kafka as kafka_mod
from fsapp.engine.kafka import KafkaIngest
from fsapp.engine.kafka_config import KafkaConfig
from fsapp.registry.errors import RepoError
from fsapp.registry.repo import Repo

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = '{topic}', timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW account_totals AS
SELECT account_id,
       count(*) OVER lifetime() AS n_payments,
       sum(amount) OVER lifetime() AS total
FROM payments;
"""


def make_repo(tmp_path, topic, bootstrap, extra=""):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "fstore.yaml").write_text(f"project: kafkatest\nkafka:\n  bootstrap_servers: {bootstrap}\n"
                                      f"  batch_size: 200\n  poll_timeout_ms: 50\n{extra}")
    (root / "defs.sql").write_text(DEFS.format(topic=topic))
    repo = Repo(root)
    repo.apply()
    return repo


def open_engine(repo):
    return Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never")


def subscribed(engine, repo):
    """The repo's Kafka ingestion into `engine`, assigned and ready for poll_once()."""
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    ingest._subscribe()
    return ingest


def drain(ingest, until, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"not caught up: {ingest.stats()}"
        ingest.poll_once()


def consumed_by_thread(ingest, n, timeout_s=20.0):
    """Waits for the ingest thread (`start()`) to have accounted for `n` messages."""
    deadline = time.monotonic() + timeout_s
    while sum(ingest.counts["consumed"].values()) < n:
        assert time.monotonic() < deadline, ingest.stats()
        time.sleep(0.05)


def failing_at(fn, at: int, calls: list):
    """`fn` that raises RuntimeError on its `at`-th call (counted in `calls`)."""
    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == at:
            raise RuntimeError(f"injected: call {at} fails")
        return fn(*a, **k)
    return wrapped


def totals(engine, accounts):
    out = engine.get_online_features(["account_totals:n_payments", "account_totals:total"],
                                     entities={"account_id": accounts})
    return out["results"][1]["values"], out["results"][2]["values"]


@pytest.mark.parametrize("native,chunk", [(True, 1000), (True, 3), (False, 1000), (False, 3)],
                         ids=["native", "native-kept-in-chunks-of-3", "consume", "consume-chunks-of-3"])
def test_json_events_reach_online_values_and_malformed_ones_are_dead_lettered(kafka_broker, tmp_path, monkeypatch,
                                                                              native, chunk):
    """Through librdkafka's C API (native_fetch) and through confluent-kafka's
    consume(), also with batches read three messages at a time: a batch is
    read lean (values, partitions and offsets only; consume()'s Message
    objects dropped chunk by chunk once scanned) and read again with its
    messages when it turns out to need them (dead letters, missing event
    times); the letters keep their keys, no event counts twice."""
    monkeypatch.setattr(kafka_mod, "CONSUME_CHUNK", chunk)
    topic = f"payments-dlq-test-{chunk}-{'native' if native else 'consume'}"
    kafka_broker.create_topic(topic, partitions=2)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap, "" if native else "  native_fetch: false\n")
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    good = [{"account_id": i % 3, "amount": 1.5, "ts": t + i} for i in range(30)]
    for i, ev in enumerate(good[:20]):
        p.produce(topic, json.dumps(ev).encode(), partition=i % 2)
    bad = [b"{not json", b"[1, 2]", json.dumps({"amount": 2.0, "ts": t}).encode(),  # no key
           json.dumps({"account_id": 1, "amount": "lots", "ts": t}).encode(),
           json.dumps({"account_id": 1, "amount": 1.0, "ts": "yesterday"}).encode()]
    for i, b in enumerate(bad):
        p.produce(topic, b, key=f"k{i}".encode(), partition=0)
    for i, ev in enumerate(good[20:]):
        # no ts field: the Kafka message timestamp is the event time; unknown fields are ignored
        p.produce(topic, json.dumps({"account_id": ev["account_id"], "amount": 1.5, "note": "x"}).encode(),
                  partition=i % 2)
    p.flush(10)

    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    assert ingest.native == native
    try:
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 35)
        counts, sums = totals(engine, [0, 1, 2, 3])
        assert counts == [10, 10, 10, 0]  # an unknown key counts 0
        assert sums == [15.0, 15.0, 15.0, None]
        stats = engine.stats()["kafka"]
        assert stats["dead_lettered"] == {topic: 5} and stats["ingested"] == {topic: 30}
        assert stats["dead_lettered_by_kind"] == {f"{topic}:json": 1, f"{topic}:not_object": 1,
                                                  f"{topic}:schema": 3}
        assert engine.offsets == {f"{topic}/0": 20, f"{topic}/1": 15}
        assert stats["rereads"] >= 1  # the batches with the bad messages, read lean first
        from fsapp.api.backend import EngineBackend
        text = EngineBackend(engine).metrics_text()
        assert f'fstore_kafka_dead_letters_total{{kind="schema",topic="{topic}"}} 3.0' in text
        assert f'fstore_kafka_consumed_total{{topic="{topic}"}} 35.0' in text
        assert f"fstore_kafka_rereads_total {float(stats['rereads'])}" in text
    finally:
        ingest.stop()
    letters = kafka_broker.read_all(f"{topic}.dlq")
    assert sorted(m.value() for m in letters) == sorted(bad)
    assert sorted((m.key(), m.value()) for m in letters) == sorted((f"k{i}".encode(), b) for i, b in enumerate(bad))
    for m in letters:
        h = dict(m.headers())
        assert h["fstore.source.topic"] == topic.encode() and h["fstore.source.partition"] == b"0"
        assert int(h["fstore.source.offset"]) >= 10 and h["fstore.reason"]
    reasons = {m.value(): dict(m.headers())["fstore.reason"].decode() for m in letters}
    assert "account_id" in reasons[bad[2]] and "not JSON" in reasons[bad[0]]
    engine.close()

    # restart: offsets (including a batch made only of dead letters) come from the WAL
    p.produce(topic, b"garbage", partition=1)
    p.flush(10)
    engine = open_engine(repo)
    assert engine.offsets == {f"{topic}/0": 20, f"{topic}/1": 15}
    ingest = subscribed(engine, repo)
    try:
        drain(ingest, lambda: engine.offsets.get(f"{topic}/1") == 16)
        assert ingest.counts["consumed"] == {topic: 1}  # nothing read twice
        assert totals(engine, [0, 1, 2])[0] == [10, 10, 10]
    finally:
        ingest.stop()
        engine.close()
    engine = open_engine(repo)
    assert engine.offsets[f"{topic}/1"] == 16  # the offsets-only WAL record replays
    engine.close()


def _odd_message(i: int, t: int, rng) -> bytes | None:
    """A message of a random kind: mostly events, some malformed in every way
    the readers judge (each kind decided by the per-message rules)."""
    a = int(rng.integers(0, 5))
    kind = int(rng.integers(0, 24))
    ev = {"account_id": a, "amount": round(float(rng.gamma(2.0, 10.0)), 2), "ts": t + i}
    if kind == 0:
        return None  # a tombstone
    if kind == 1:
        return b""
    if kind == 2:
        return b"{not json"
    if kind == 3:
        return b"[1, 2]"
    if kind == 4:
        return json.dumps({**ev, "amount": "lots"}).encode()
    if kind == 5:
        return json.dumps({k: v for k, v in ev.items() if k != "ts"}).encode()  # the Kafka timestamp stands in
    if kind == 6:
        return json.dumps({**ev, "note": "\u00ff\u00e9"}).encode()  # escaped text: valid
    if kind == 7:
        return json.dumps(ev).encode()[:-1] + b', "raw": "\xff\xfe"}'  # not UTF-8
    if kind == 8:
        return json.dumps(ev, indent=1).encode()  # over several lines: valid JSON
    if kind == 9:
        return json.dumps({**ev, "pad": "x" * 100_000}).encode()  # big, the field ignored
    if kind == 10:
        return json.dumps({**ev, "account_id": float(a)}).encode()  # 1.0 for a BIGINT
    if kind == 11:
        return json.dumps(ev).encode().replace(b', "ts"', b'e0, "ts"', 1)  # the amount with an exponent
    if kind == 12:
        return b'{"account_id": 1, "amount": 1.0, "ts": ' + str(t + i).encode() + b'} {"account_id": 2}'
    if kind == 13:
        return json.dumps({**ev, "s": "nul\u0000inside"}).encode()
    return json.dumps(ev).encode()


def test_both_readers_read_a_random_mix_alike(kafka_broker, tmp_path, rng):
    """The same topic of events mixed with every kind of malformed message,
    read by librdkafka's C API (native_fetch) and by confluent-kafka's
    consume(): the same online values, the same dead letters (partition,
    offset, kind), the same offsets."""
    topic = "payments-readers-alike"
    kafka_broker.create_topic(topic, partitions=2)
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    n = 1500
    for i in range(n):
        p.produce(topic, _odd_message(i, t, rng), partition=i % 2)
        if i % 500 == 0:
            p.flush(10)
    p.flush(10)
    seen = {}
    for native in (True, False):
        root = tmp_path / ("native" if native else "consume")
        root.mkdir()
        repo = make_repo(root, topic, kafka_broker.bootstrap,
                         "  dead_letter_file: data/dead.jsonl\n" + ("" if native else "  native_fetch: false\n"))
        engine = open_engine(repo)
        ingest = subscribed(engine, repo)
        assert ingest.native == native
        try:
            drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == n, timeout_s=60)
            values = totals(engine, list(range(5)))
            offsets = dict(engine.offsets)
        finally:
            ingest.stop()
            engine.close()
        dead = sorted((d["partition"], d["offset"], d["kind"]) for d in
                      map(json.loads, (repo.root / "data" / "dead.jsonl").read_text().splitlines()))
        seen[native] = (values, dead, offsets)
    (counts, sums), dead, offsets = seen[True]
    # (sums to the last bits: the partitions interleave differently in the two runs' batches)
    assert counts == seen[False][0][0] and sums == pytest.approx(seen[False][0][1], rel=1e-12)
    assert dead == seen[False][1] and offsets == seen[False][2]
    assert seen[True][2] == {f"{topic}/0": n // 2, f"{topic}/1": n // 2} and len(seen[True][1]) > 50


def test_without_librdkafka_at_hand_the_ingest_reads_through_consume(kafka_broker, tmp_path, monkeypatch, caplog):
    """native_fetch needs the librdkafka confluent-kafka loaded; where it
    cannot be bound the ingest says why and reads through consume()."""
    import logging

    monkeypatch.setattr(kafka_mod.kafka_native, "available", lambda: "no librdkafka among the mapped files")
    topic = "payments-no-native"
    kafka_broker.create_topic(topic, partitions=1)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap)
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    for i in range(10):
        p.produce(topic, json.dumps({"account_id": i % 2, "amount": 1.0, "ts": t + i}).encode())
    p.flush(10)
    engine = open_engine(repo)
    with caplog.at_level(logging.INFO, logger="fstore.kafka"):
        ingest = subscribed(engine, repo)
    try:
        assert not ingest.native and ingest.stats()["reader"] == "consume()"
        assert "reading through confluent-kafka's consume(): no librdkafka among the mapped files" in caplog.text
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 10)
        assert totals(engine, [0, 1])[0] == [5, 5]
    finally:
        ingest.stop()
        engine.close()


def test_a_key_sent_as_text_is_the_only_dead_letter_of_its_batch(kafka_broker, tmp_path):
    """One message whose entity key is JSON text made the key column of its
    whole batch text, and the key column refuses text: every good event of
    the batch went to the dead letters with it ("takes integers, not text
    (got '6')"). The refused batch is bisected into parts decoded on their
    own: only the odd messages are dead letters, the rest counted in order."""
    topic = "payments-mixed-key"
    kafka_broker.create_topic(topic, partitions=1)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap)
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    bad = {7: {"account_id": "x", "amount": 1.0, "ts": t}, 30: {"account_id": "2", "amount": 1.0, "ts": t},
           31: {"account_id": 1, "amount": "lots", "ts": t}}
    sent = []
    for i in range(80):
        ev = bad.get(i) or {"account_id": i % 3, "amount": 1.5 if i % 2 else "2.5", "ts": t + i}
        sent.append(ev)
        p.produce(topic, json.dumps(ev).encode(), partition=0)
    p.flush(10)
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    try:
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 80)
        good = [ev for i, ev in enumerate(sent) if i not in bad]
        counts, sums = totals(engine, [0, 1, 2])
        assert counts == [sum(1 for ev in good if ev["account_id"] == a) for a in range(3)]
        assert sums == [sum(float(ev["amount"]) for ev in good if ev["account_id"] == a) for a in range(3)]
        assert engine.stats()["kafka"]["dead_lettered"] == {topic: 3}
        assert engine.offsets == {f"{topic}/0": 80}
    finally:
        ingest.stop()
        engine.close()
    letters = kafka_broker.read_all(f"{topic}.dlq")
    assert sorted(int(dict(m.headers())["fstore.source.offset"]) for m in letters) == sorted(bad)


def test_a_clean_topic_is_read_by_the_batch_decoder_and_a_poison_time_is_a_dead_letter(kafka_broker, tmp_path):
    """Issue 16: batches decode at once (Arrow's JSON reader), with the same
    values as the per-message reader. A NaN event time (JSON allows it) used
    to raise ValueError out of the per-message reader: the batch failed and
    was retried forever, stopping the topic."""
    topic = "payments-batch-decode"
    kafka_broker.create_topic(topic, partitions=2)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap)
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    for i in range(3000):
        p.produce(topic, json.dumps({"account_id": i % 7, "amount": i / 4, "ts": t + i, "src": "pos"}).encode(),
                  partition=i % 2)
    p.flush(10)
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    try:
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 3000)
        dec = ingest.decoders[topic]
        assert dec.batches["each"] == 0 and dec.batches["batch"] >= 2
        counts, sums = totals(engine, list(range(7)))
        assert counts == [len(range(a, 3000, 7)) for a in range(7)]
        assert sums == [sum(i / 4 for i in range(a, 3000, 7)) for a in range(7)]
        p.produce(topic, b'{"account_id": 1, "amount": 1.0, "ts": NaN}', partition=0)
        p.produce(topic, json.dumps({"account_id": 1, "amount": 1.0, "ts": t + 5000}).encode(), partition=0)
        p.flush(10)
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 3002)
        assert ingest.errors == 0
        assert engine.stats()["kafka"]["dead_lettered_by_kind"] == {f"{topic}:schema": 1}
        assert totals(engine, [1])[0] == [counts[1] + 1]
    finally:
        ingest.stop()
        engine.close()


def test_group_mode_replays_assigned_partitions_from_the_start_not_the_committed_offsets(kafka_broker, tmp_path):
    """Group mode (docs/kafka.md, scale-out): a node that leaves the group
    drops its partitions' keys; a node that starts owns nothing until the
    group assigns it partitions, which it replays from their start into
    empty state: Kafka's committed offsets are never read, nothing counts
    twice."""
    from confluent_kafka import Consumer, TopicPartition

    from fsapp.engine.cluster import partition_for

    topic = "payments-group-test"
    kafka_broker.create_topic(topic, partitions=2)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap,
                     "  assign: group\n  group_id: g-resume\n  session.timeout.ms: 6000\n"
                     "  dead_letter_file: data/dead.jsonl\n")
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    assert partition_for(7, 2) != partition_for(6, 2)
    for i in range(40):
        a = (7, 6)[i % 2]
        p.produce(topic, json.dumps({"account_id": a, "amount": 1.0, "ts": t + i}).encode(),
                  partition=partition_for(a, 2))
    p.produce(topic, b"oops", partition=0)
    p.flush(10)
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    try:
        # (a partition's keys are readable once it is seen caught up: checked every 200 ms)
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 41 and not ingest.stats()["recovering"],
              timeout_s=40)
        assert totals(engine, [7, 6])[0] == [20, 20]
    finally:
        ingest.stop()  # leaves the group: its partitions are revoked, their keys dropped
    out = engine.get_online_features(["account_totals:n_payments"], entities={"account_id": [7, 6]})
    assert out["results"][1]["statuses"] == ["NOT_FOUND", "NOT_FOUND"] and engine.offsets == {}
    dead = [json.loads(line) for line in (repo.root / "data" / "dead.jsonl").read_text().splitlines()]
    assert [(d["value"], d["kind"]) for d in dead] == [("oops", "json")]
    engine.close()

    # Kafka's committed offsets say "read from 0" while the group's lag says
    # otherwise: neither matters, the engine replays into empty state
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "g-resume"})
    c.commit(offsets=[TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)], asynchronous=False)
    c.close()
    for i in range(10):
        a = (7, 6)[i % 2]
        p.produce(topic, json.dumps({"account_id": a, "amount": 1.0, "ts": t + 100 + i}).encode(),
                  partition=partition_for(a, 2))
    p.flush(10)
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    try:
        drain(ingest, lambda: totals(engine, [7, 6])[0] == [25, 25], timeout_s=40)
        for _ in range(5):
            ingest.poll_once()
        assert totals(engine, [7, 6])[0] == [25, 25]
        assert ingest.counts["consumed"] == {topic: 51}
        assert ingest.cluster()["partitions"] and all(p["state"] == "live" for p in ingest.cluster()["partitions"])
    finally:
        ingest.stop()
        engine.close()


def test_a_batch_read_across_a_reassignment_is_read_again_not_applied_twice(kafka_broker, tmp_path, monkeypatch):
    """Rebalance callbacks run inside poll() and consume(), and a batch is
    read in several consume() calls: a (re)assignment in the middle moves the
    partitions back to the engine's offsets, so the messages read before it
    come again after it. The batch is dropped and read again from the
    engine's offsets: every event counts once."""
    from confluent_kafka import TopicPartition

    monkeypatch.setattr(kafka_mod, "CONSUME_CHUNK", 4)
    # (callbacks run inside consume() only when reading through it: native_fetch off)
    monkeypatch.setattr(kafka_mod.kafka_native, "available", lambda: "group mode's consumer")
    topic = "payments-rebalance-test"
    kafka_broker.create_topic(topic, partitions=2)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap)
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    for i in range(60):
        p.produce(topic, json.dumps({"account_id": i % 3, "amount": 1.0, "ts": t + i}).encode(), partition=i % 2)
    p.flush(10)
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    real = ingest.consumer
    calls = []

    class Reassigning:
        """The consumer, with what an eager rebalance's assign callback does
        (KafkaIngest._on_assign: positions at the engine's offsets) run
        inside the second consume() call."""

        def __getattr__(self, name):
            return getattr(real, name)

        def consume(self, n, timeout):
            calls.append(n)
            if len(calls) == 2:
                real.assign([TopicPartition(topic, q, ingest._start_offset(topic, q)) for q in (0, 1)])
                ingest._handoffs += 1
            return real.consume(n, timeout)

    ingest.consumer = Reassigning()
    try:
        deadline = time.monotonic() + 20
        while totals(engine, [0, 1, 2])[0] != [20, 20, 20] or sum(ingest.counts["consumed"].values()) < 60:
            assert time.monotonic() < deadline, (totals(engine, [0, 1, 2]), ingest.stats())
            ingest.poll_once()
        for _ in range(5):
            ingest.poll_once()
        assert totals(engine, [0, 1, 2])[0] == [20, 20, 20]
        assert ingest.counts["consumed"] == {topic: 60} and ingest.stats()["rereads"] >= 1
    finally:
        ingest.consumer = real
        ingest.stop()
        engine.close()


def test_config_errors_say_what_to_fix(tmp_path):
    repo = make_repo(tmp_path, "t", "127.0.0.1:1", "  assign: some\n")
    with pytest.raises(RepoError, match="assign"):
        KafkaConfig.from_repo(repo)
    (repo.root / "fstore.yaml").write_text("project: p\nkafka:\n  bootstrap_servers: x:1\n  enable.auto.commit: true\n")
    with pytest.raises(RepoError, match="set by fstore"):
        KafkaConfig.from_repo(Repo(repo.root))
    (repo.root / "fstore.yaml").write_text("project: p\nkafka:\n  bootstrap_servers: x:1\n  batchsize: 3\n")
    with pytest.raises(RepoError, match="unknown setting 'batchsize'"):
        KafkaConfig.from_repo(Repo(repo.root))
    (repo.root / "fstore.yaml").write_text("project: p\nkafka:\n  bootstrap_servers: x:1\n  security.protocol: SSL\n")
    cfg = KafkaConfig.from_repo(Repo(repo.root))
    assert cfg.client_properties()["security.protocol"] == "SSL" and cfg.group_id == "fstore-p"
    for bad, says in (("max_share: 0", "fraction in 0.05..1"), ("max_share: yes", "fraction"),
                      ("ready_max_lag: -1", "ready_max_lag: expected a number >= 0"),
                      ("shared_batch_size: 0", "shared_batch_size: expected a number >= 1"),
                      ("advertised_url: 10.0.0.1:9094", "not an http\\(s\\) URL"),
                      ("members_topic: ''", "members_topic: expected a non-empty string"),
                      ("read_ahead: 1", "read_ahead: expected true or false"),
                      ("native_fetch: 'no'", "native_fetch: expected true or false"),
                      # librdkafka's judgement at load, with the line (the engine crashed at every start)
                      ("no.such.prop: 3", r"line 4: kafka: no.such.prop: No such configuration property"),
                      ("properties: {fetch.wait.max.ms: soon}",
                       r"line 4: kafka: fetch.wait.max.ms: Invalid value")):
        (repo.root / "fstore.yaml").write_text(f"project: p\nkafka:\n  bootstrap_servers: x:1\n  {bad}\n")
        with pytest.raises(RepoError, match=says):
            KafkaConfig.from_repo(Repo(repo.root))


def test_rest_pushes_get_smaller_kafka_batches_and_pauses_and_ready_reports_the_lag(kafka_broker, tmp_path):
    """Issue 16 (no backpressure): during a catch-up, REST pushes waited
    behind whole Kafka batches. While REST pushes arrive, batches shrink to
    shared_batch_size and the ingest thread pauses (max_share); /ready says
    how far behind ingestion is when kafka.ready_max_lag is set."""
    from fsapp.api.backend import EngineBackend

    topic = "payments-backpressure"
    kafka_broker.create_topic(topic)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap,
                     "  max_share: 0.5\n  shared_batch_size: 50\n  ready_max_lag: 100\n")
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    for i in range(1200):
        p.produce(topic, json.dumps({"account_id": i % 5, "amount": 1.0, "ts": t + i}).encode())
    p.flush(10)
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    backend = EngineBackend(engine)
    try:
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) > 0)
        ingest._update_lag()
        ok, why = backend.ready()
        assert not ok and "catching up on Kafka" in why and f"{topic}/0" in why, why
        assert 0 < sum(ingest.counts["consumed"].values()) <= 200  # batch_size (make_repo: 200)
        engine.push("payments", {"account_id": [99], "amount": [1.0], "ts": [t + 5000]})  # a REST push
        before = sum(ingest.counts["consumed"].values())
        # the next batch applied is a shared one (a batch read ahead before the push is read again
        # in shared batches: the consumer fetches from the engine's offsets, maybe not within one poll)
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) > before)
        assert 0 < sum(ingest.counts["consumed"].values()) - before <= 50 and ingest.paused_s > 0
        before, paused = sum(ingest.counts["consumed"].values()), ingest.paused_s
        ingest.poll_once()  # no REST push since: full batches, no pause
        assert 50 < sum(ingest.counts["consumed"].values()) - before <= 200 and ingest.paused_s == paused
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 1200)
        ingest._update_lag()
        assert backend.ready() == (True, "")
        assert "fstore_kafka_backpressure_seconds_total" in backend.metrics_text()
    finally:
        ingest.stop()
        engine.close()


def test_a_failed_engine_push_does_not_dead_letter_its_batch_twice(kafka_broker, tmp_path):
    """A batch's dead letters are sent before its push (whose offsets skip
    them). When the push failed (the engine's fault, not the rows'), the
    batch was read again and its dead letters sent again: the dead-letter
    topic held each twice."""
    topic = "payments-dead-once"
    kafka_broker.create_topic(topic)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap)
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    for i in range(30):
        p.produce(topic, b"{broken" if i in (3, 17) else
                  json.dumps({"account_id": i % 3, "amount": 1.0, "ts": t + i}).encode())
    p.flush(10)
    engine = open_engine(repo)
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    engine.push = failing_at(engine.push, 1, [])
    ingest.start()
    try:
        consumed_by_thread(ingest, 30)
        assert ingest.errors == 1 and ingest.stats()["dead_lettered"] == {topic: 2}, ingest.stats()
        assert totals(engine, [0, 1, 2])[0] == [9, 10, 9]
    finally:
        ingest.stop()
        engine.close()
    assert len(kafka_broker.read_all(f"{topic}.dlq")) == 2


def test_the_next_batch_is_read_while_one_is_applied_and_a_failure_on_either_side_counts_every_event_once(
        kafka_broker, tmp_path):
    """Read-ahead (assign all, kafka.read_ahead): a thread of its own
    consumes and decodes the next batch while the engine applies the last.
    A failure of the read-ahead and a failed engine push (each once) make
    the ingest thread read again from the engine's offsets: every event is
    counted once and every malformed message dead-lettered once."""
    import threading

    topic = "payments-read-ahead"
    kafka_broker.create_topic(topic, partitions=2)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap)
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    want: dict = {}
    for i in range(3000):
        if i in (7, 2907):  # (a batch holding one is read again keeping its messages, and not ahead)
            p.produce(topic, b"{broken", partition=i % 2)
            continue
        a = i % 11
        want[a] = want.get(a, 0) + 1
        p.produce(topic, json.dumps({"account_id": a, "amount": 1.0, "ts": t + i}).encode(), partition=i % 2)
    p.flush(10)
    engine = open_engine(repo)
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    reads = []
    real_take, ahead_take = ingest._take, failing_at(ingest._take, 4, reads)

    def take(*a, **k):  # the read-ahead's reads fail at the 4th
        in_reader = threading.current_thread().name.startswith("fstore-kafka-read")
        return (ahead_take if in_reader else real_take)(*a, **k)

    ingest._take, engine.push = take, failing_at(engine.push, 6, [])
    ingest.start()
    try:
        consumed_by_thread(ingest, 3000, timeout_s=30)
        time.sleep(0.3)  # (nothing more comes)
        stats = ingest.stats()
        assert stats["consumed"] == {topic: 3000} and stats["dead_lettered"] == {topic: 2}, stats
        assert ingest.errors == 2 and len(reads) > 4, (ingest.errors, len(reads), ingest.last_error)
        accounts = sorted(want)
        n, _ = totals(engine, accounts)
        assert n == [want[a] for a in accounts]
    finally:
        ingest.stop()
        engine.close()
    assert len(kafka_broker.read_all(f"{topic}.dlq")) == 2


def test_partitions_caught_up_at_different_speeds_are_judged_late_each_against_its_own_events(kafka_broker,
                                                                                             tmp_path):
    """Lateness was judged per stream: a consumer catching up on several
    partitions (a start on an existing topic, a rebalance) read one partition
    hours ahead of another, and the other's events were dropped as late
    online while the offline log kept them — online and training sets
    disagreed, by an amount that depended on the fetch order. Each partition
    now has its own watermark, logged with each batch (a replay judges the
    same) and kept in checkpoints; within a partition the rule is unchanged."""
    topic = "payments-partition-lateness"
    kafka_broker.create_topic(topic, partitions=3)
    repo = make_repo(tmp_path, topic, kafka_broker.bootstrap)
    H = 3_600_000_000
    t0 = time.time_ns() // 1000 - 30 * H
    p = kafka_broker.producer()
    ahead = {0: 20 * H, 1: 0, 2: 10 * H}  # partition 0's events are 20 h newer than partition 1's
    for part, shift in ahead.items():
        for j in range(600):
            p.produce(topic, json.dumps({"account_id": part * 100 + j % 5, "amount": 1.0,
                                         "ts": t0 + shift + j * 1_000_000}).encode(), partition=part)
    p.flush(10)
    accounts = [part * 100 + a for part in ahead for a in range(5)]
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    try:
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 1800)
        assert engine.late_total == 0
        assert totals(engine, accounts)[0] == [120] * 15
        # within a partition the rule holds: 2 h older than partition 1's newest is late
        p.produce(topic, json.dumps({"account_id": 100, "amount": 1.0, "ts": t0 - 2 * H}).encode(), partition=1)
        p.produce(topic, json.dumps({"account_id": 101, "amount": 1.0, "ts": t0 + 600_000_000}).encode(),
                  partition=1)
        p.flush(10)
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 1802)
        assert engine.late_total == 1 and totals(engine, [100, 101])[0] == [120, 121]
    finally:
        ingest.stop()
        engine.close()
    # a restart replays the log with each batch's partitions: the same judgement
    engine = open_engine(repo)
    try:
        assert engine.late_total == 1
        assert totals(engine, accounts)[0] == [120] * 5 + [120, 121, 120, 120, 120] + [120] * 5
        engine.checkpoint()
    finally:
        engine.close()
    engine = open_engine(repo)
    ingest = subscribed(engine, repo)
    try:  # ... and from a checkpoint, which keeps the partitions' watermarks
        p.produce(topic, json.dumps({"account_id": 100, "amount": 1.0, "ts": t0 - 2 * H}).encode(), partition=1)
        p.produce(topic, json.dumps({"account_id": 200, "amount": 1.0, "ts": t0 + 9 * H + H // 2}).encode(),
                  partition=2)  # 10 h behind partition 0, within an hour of its own
        p.flush(10)
        drain(ingest, lambda: sum(ingest.counts["consumed"].values()) == 2)
        assert engine.late_total == 2 and totals(engine, [100, 200])[0] == [120, 121]
    finally:
        ingest.stop()
        engine.close()
